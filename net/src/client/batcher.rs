//! Coalesces single transfers from many threads into batches: while one batch is on the wire,
//! the next one fills up, so batching costs no added latency at low load and reaches full
//! batches at high load.

use super::{Client, ClientError};
use engine::{NewTransfer, ResultCode, BATCH_ITEMS_MAX};
use futures::channel::oneshot;
use std::sync::Arc;

type Item = (
    NewTransfer,
    oneshot::Sender<Result<ResultCode, ClientError>>,
);

/// Items waiting to be batched before `transfer` blocks the caller.
const QUEUE_MAX: usize = 4 * BATCH_ITEMS_MAX;

#[derive(Clone)]
pub struct Batcher {
    queue: flume::Sender<Item>,
}

impl Batcher {
    pub(super) fn start(client: Arc<Client>) -> Batcher {
        let (tx, rx) = flume::bounded::<Item>(QUEUE_MAX);
        std::thread::Builder::new()
            .name("walletd-client-batcher".into())
            .spawn(move || {
                let mut batch: Vec<NewTransfer> = Vec::with_capacity(BATCH_ITEMS_MAX);
                let mut waiters = Vec::with_capacity(BATCH_ITEMS_MAX);
                while let Ok(first) = rx.recv() {
                    batch.push(first.0);
                    waiters.push(first.1);
                    while batch.len() < BATCH_ITEMS_MAX {
                        match rx.try_recv() {
                            Ok((t, w)) => {
                                batch.push(t);
                                waiters.push(w);
                            }
                            Err(_) => break,
                        }
                    }
                    match client.create_transfers(&batch) {
                        Ok(results) => {
                            for (w, code) in waiters.drain(..).zip(results) {
                                let _ = w.send(Ok(code));
                            }
                        }
                        Err(e) => {
                            for w in waiters.drain(..) {
                                let _ = w.send(Err(e.clone()));
                            }
                        }
                    }
                    batch.clear();
                }
            })
            .expect("spawn the batcher thread");
        Batcher { queue: tx }
    }

    /// Submits one transfer and waits for its result (async, any runtime).
    pub async fn transfer_async(&self, transfer: NewTransfer) -> Result<ResultCode, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send_async((transfer, tx))
            .await
            .map_err(|_| ClientError::Disconnected("batcher stopped".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(ClientError::Disconnected("batcher stopped".into())))
    }

    /// Blocking form of `transfer_async`.
    pub fn transfer(&self, transfer: NewTransfer) -> Result<ResultCode, ClientError> {
        futures::executor::block_on(self.transfer_async(transfer))
    }
}
