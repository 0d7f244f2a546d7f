//! AffiliateActors: settle one batch of a run's affiliates at a time — §3 and the invoice
//! transactions — through the engine. A fixed pool of them bounds the writes in flight.

use actix::prelude::*;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::engine::{
    AFFILIATES_PER_BATCH, AffiliateResult, AffiliateWork, Engine, EngineError, PreparedRun,
    RunContext, Settler,
};

/// Settle a batch of affiliates of a claimed run.
#[derive(Message)]
#[rtype(result = "Result<AffiliateResult, EngineError>")]
pub struct Settle {
    pub engine: Engine,
    pub context: RunContext,
    pub works: Vec<AffiliateWork>,
    pub cancel: CancellationToken,
}

/// One worker; handles one [`Settle`] at a time.
#[derive(Debug, Default)]
pub struct AffiliateActor;

impl Actor for AffiliateActor {
    type Context = Context<Self>;
}

impl Handler<Settle> for AffiliateActor {
    type Result = AtomicResponse<Self, Result<AffiliateResult, EngineError>>;

    fn handle(&mut self, msg: Settle, _ctx: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(Box::pin(
            async move {
                if msg.cancel.is_cancelled() {
                    return Err(EngineError::Interrupted);
                }
                msg.engine.settle(&msg.context, &msg.works).await
            }
            .into_actor(self),
        ))
    }
}

/// The pool: affiliates go to worker `affiliate_id mod size`.
#[derive(Clone, Debug)]
pub struct AffiliatePool {
    workers: Vec<Addr<AffiliateActor>>,
}

impl AffiliatePool {
    /// Starts `size` workers (at least one) on the current actix arbiter.
    pub fn start(size: u32) -> Self {
        Self {
            workers: (0..size.max(1)).map(|_| AffiliateActor.start()).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
}

#[async_trait::async_trait]
impl Settler for AffiliatePool {
    async fn settle_all(
        &self,
        engine: &Engine,
        prepared: &PreparedRun,
        cancel: &CancellationToken,
    ) -> (Vec<Result<AffiliateResult, EngineError>>, bool) {
        // Batches of affiliates, dealt round-robin: each affiliate is in exactly one batch,
        // so no two workers ever write for the same affiliate.
        let sends = prepared
            .work
            .chunks(AFFILIATES_PER_BATCH)
            .enumerate()
            .map(|(i, works)| {
                self.workers[i % self.workers.len()].send(Settle {
                    engine: engine.clone(),
                    context: prepared.context,
                    works: works.to_vec(),
                    cancel: cancel.clone(),
                })
            });
        let mut interrupted = false;
        let mut results = Vec::with_capacity(prepared.work.len());
        for answer in join_all(sends).await {
            match answer {
                Ok(Err(EngineError::Interrupted)) => interrupted = true,
                Ok(result) => results.push(result),
                Err(e) => results.push(Err(EngineError::Worker(e.to_string()))),
            }
        }
        (results, interrupted)
    }
}
