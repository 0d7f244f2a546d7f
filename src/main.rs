//! The `autoinvoice` command. Its subcommands (SPEC §8) arrive with the storage issue.

fn main() {
    println!("autoinvoice {}", env!("CARGO_PKG_VERSION"));
}
