//! Validates real responses against the checked-in OpenAPI document.

use std::sync::OnceLock;

use serde_json::{Value, json};

fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
                .unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

/// Panics unless `body` is what docs/openapi.json says `method path` answers with `status`
/// (`path` is the template, e.g. `/api/v1/tenants/{id}/settings`).
pub fn assert_conforms(method: &str, path: &str, status: u16, body: &Value) {
    let doc = document();
    let operation = &doc["paths"][path][method.to_lowercase()];
    assert!(
        operation.is_object(),
        "{method} {path} is not in docs/openapi.json"
    );
    let response = &operation["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} does not document status {status}"
    );
    let schema = &response["content"]["application/json"]["schema"];
    let root = json!({
        "$ref": schema["$ref"],
        "components": doc["components"],
    });
    let validator = jsonschema::validator_for(&root).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not match docs/openapi.json: {errors:#?}\n{body:#}"
    );
}
