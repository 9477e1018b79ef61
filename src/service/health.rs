//! `grpc.health.v1.Health`, served without a token (probes and load balancers), with its open
//! surface bounded: at most `server.max_health_watches` `Watch` streams at once over every
//! listener (more get `RESOURCE_EXHAUSTED` naming the setting), and every `Watch` stream ended
//! when shutdown begins, after it has seen `NOT_SERVING`. `Check` is tonic-health's.
//!
//! Without the bound, each `Watch` holds an HTTP/2 stream and a task forever, so clients with
//! no token could grow the daemon's memory without limit (issue 23: 100 000 streams, 11 →
//! 585 MB). This module must not report statuses (the server does, through the reporter).

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt as _};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{
        HealthCheckRequest, HealthCheckResponse,
        health_check_response::ServingStatus,
        health_server::{Health, HealthServer},
    },
    server::{HealthReporter, HealthService},
};

/// The health service of one daemon, shared by every listener.
pub(super) struct BoundedHealth {
    inner: HealthService,
    watches: Arc<Semaphore>,
    limit: usize,
    stop: CancellationToken,
}

impl BoundedHealth {
    /// The statuses of `reporter`, at most `limit` `Watch` streams at once, ended by `stop`.
    pub(super) fn server(
        reporter: HealthReporter,
        limit: usize,
        stop: CancellationToken,
    ) -> HealthServer<Self> {
        HealthServer::new(Self {
            inner: HealthService::from_health_reporter(reporter),
            watches: Arc::new(Semaphore::new(limit)),
            limit,
            stop,
        })
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for BoundedHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let permit = Arc::clone(&self.watches)
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "server.max_health_watches: {} health Watch streams are open; use Check, or retry later",
                    self.limit
                ))
            })?;
        let statuses = self.inner.watch(request).await?.into_inner();
        // At shutdown the last status a watcher sees is NOT_SERVING; then the stream ends and
        // its place is given back.
        let not_serving = HealthCheckResponse {
            status: ServingStatus::NotServing as i32,
        };
        let stream = statuses
            .take_until(self.stop.clone().cancelled_owned())
            .chain(futures::stream::once(async move { Ok(not_serving) }))
            .map(move |item| {
                let _held = &permit;
                item
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
