//! The publishing side: HTTP publications at a target rate, each stamped with the generator's
//! clock so that receivers can measure publish-to-receive latency.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::Target;

/// Requests allowed in flight at once; past this the publisher falls behind its rate.
const MAX_IN_FLIGHT: usize = 64;

/// What a publishing run achieved.
#[derive(Default, Clone, Copy)]
pub struct Published {
    /// Publications the server accepted (200).
    pub accepted: u64,
    /// Publications refused or failed.
    pub failed: u64,
    /// Whether the publisher could not keep up with the asked rate.
    pub fell_behind: bool,
}

pub struct Publisher {
    client: reqwest::Client,
    url: String,
    key: String,
}

impl Publisher {
    pub fn new(target: &Target, path: &str) -> Publisher {
        Publisher {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(MAX_IN_FLIGHT)
                .build()
                .unwrap_or_default(),
            url: format!("{}{path}", target.http_base),
            key: target.api_key.clone(),
        }
    }

    /// Sends `rate` requests per second for `duration`. `body(i)` builds request `i` and says how
    /// many publications it holds. `rate = None` sends as fast as `MAX_IN_FLIGHT` allows.
    pub async fn run(
        &self,
        rate: Option<f64>,
        duration: Duration,
        mut body: impl FnMut(u64) -> (String, u64),
    ) -> Published {
        let start = Instant::now();
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let accepted = Rc::new(Cell::new(0u64));
        let failed = Rc::new(Cell::new(0u64));
        let mut fell_behind = false;
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while start.elapsed() < duration {
            tick.tick().await;
            let due = match rate {
                Some(rate) => (start.elapsed().as_secs_f64() * rate) as u64,
                None => sent + permits.available_permits() as u64,
            };
            while sent < due {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    if rate.is_some() {
                        fell_behind = true;
                    }
                    break;
                };
                let (text, publications) = body(sent);
                sent += 1;
                let request = self
                    .client
                    .post(&self.url)
                    .bearer_auth(&self.key)
                    .header("content-type", "application/json")
                    .body(text);
                let (accepted, failed) = (accepted.clone(), failed.clone());
                tokio::task::spawn_local(async move {
                    let ok = matches!(request.send().await, Ok(r) if r.status().is_success());
                    let counter = if ok { &accepted } else { &failed };
                    counter.set(counter.get() + publications);
                    drop(permit);
                });
            }
        }
        // Let the requests in flight finish.
        let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
        Published {
            accepted: accepted.get(),
            failed: failed.get(),
            fell_behind,
        }
    }
}
