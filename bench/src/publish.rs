//! The publishing side: HTTP publications at a target rate, each stamped with the generator's
//! clock so that receivers can measure publish-to-receive latency.
//!
//! The publisher speaks HTTP/1.1 itself over [`CONNECTIONS`] keep-alive connections, as lean as
//! the fleet's WebSocket client: the generator's core also reads every delivery, and at tens of
//! thousands of requests per second a general-purpose HTTP client cost more of it than the
//! server spent answering (the publisher, not the server, set the personal scenario's ceiling).
//! A dispatcher hands out request tickets at the asked rate; an idle connection takes the due
//! tickets, up to its pipeline depth, writes them in one `write`, and reads their answers. With
//! the default depth of 1 each connection has one request in flight, as a backend's connection
//! pool does; a deeper pipeline is only used when tickets wait (the publisher is behind).
//!
//! With several nodes, the connections are spread over them round robin, so that publications
//! enter through every node.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io::{Read, Write as _};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::Target;

/// Keep-alive connections to the server (to all its nodes together), each with at most
/// `pipeline` requests in flight.
pub const CONNECTIONS: usize = 64;

/// A request that waits this long past its due time for a free connection marks the step
/// `publisher-behind`.
const BEHIND: Duration = Duration::from_millis(50);

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
    /// The nodes' `host:port`; connection `j` talks to `addresses[j % len]`.
    addresses: Vec<String>,
    path: String,
    key: String,
    /// Requests a connection may have in flight at once (HTTP/1.1 pipelining when above 1).
    pipeline: usize,
}

/// State shared by the dispatcher and the connections of one run.
struct Run<'a> {
    /// Tickets due and not yet taken by a connection.
    due: RefCell<VecDeque<u64>>,
    /// Wakes a connection when a ticket is queued.
    queued: Notify,
    /// Set when the step's time is up: connections finish what they hold and stop.
    done: Cell<bool>,
    /// Builds request `i`'s body and says how many publications it holds.
    body: RefCell<&'a mut dyn FnMut(u64) -> (String, u64)>,
    accepted: Cell<u64>,
    failed: Cell<u64>,
}

impl<'a> Run<'a> {
    fn new(body: &'a mut dyn FnMut(u64) -> (String, u64), due: VecDeque<u64>) -> Run<'a> {
        Run {
            due: RefCell::new(due),
            queued: Notify::new(),
            done: Cell::new(false),
            body: RefCell::new(body),
            accepted: Cell::new(0),
            failed: Cell::new(0),
        }
    }
}

impl Publisher {
    pub fn new(target: &Target, path: &str) -> Publisher {
        Publisher::pipelined(target, path, 1)
    }

    /// A publisher whose connections pipeline up to `depth` requests when tickets wait.
    pub fn pipelined(target: &Target, path: &str, depth: usize) -> Publisher {
        Publisher {
            addresses: target
                .http_bases
                .iter()
                .map(|base| {
                    base.trim_start_matches("http://")
                        .trim_end_matches('/')
                        .to_string()
                })
                .collect(),
            path: path.to_string(),
            key: target.api_key.clone(),
            pipeline: depth.max(1),
        }
    }

    /// Sends `rate` requests per second for `duration`. `body(i)` builds request `i` and says how
    /// many publications it holds. `rate = None` sends as fast as the connections allow.
    pub async fn run(
        &self,
        rate: Option<f64>,
        duration: Duration,
        mut body: impl FnMut(u64) -> (String, u64),
    ) -> Published {
        let run = Run::new(&mut body, VecDeque::new());
        let mut connections = self.connections(&run);
        let dispatch = async {
            let start = Instant::now();
            let mut issued = 0u64;
            let mut fell_behind = false;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let behind = |oldest: Option<u64>, elapsed: f64| match (rate, oldest) {
                // A ticket that has waited past `BEHIND` for a free connection: every
                // connection was busy, so the asked rate was not kept.
                (Some(rate), Some(oldest)) => {
                    elapsed - (oldest + 1) as f64 / rate > BEHIND.as_secs_f64()
                }
                _ => false,
            };
            loop {
                tick.tick().await;
                let elapsed = start.elapsed().as_secs_f64();
                if elapsed >= duration.as_secs_f64() {
                    break;
                }
                let (waiting, oldest) = {
                    let due = run.due.borrow();
                    (due.len(), due.front().copied())
                };
                fell_behind |= behind(oldest, elapsed);
                let target = match rate {
                    Some(rate) => (elapsed * rate) as u64,
                    // As fast as possible: keep every connection's pipeline full.
                    None => issued + (CONNECTIONS * self.pipeline).saturating_sub(waiting) as u64,
                };
                let mut due = run.due.borrow_mut();
                while issued < target {
                    due.push_back(issued);
                    issued += 1;
                    run.queued.notify_one();
                }
            }
            // Tickets issued before the end are still sent; the connections stop once they
            // have taken them all.
            let oldest = run.due.borrow().front().copied();
            fell_behind |= behind(oldest, start.elapsed().as_secs_f64());
            run.done.set(true);
            for _ in 0..CONNECTIONS {
                run.queued.notify_one();
            }
            fell_behind
        };
        let drain = async { while connections.next().await.is_some() {} };
        let (fell_behind, ()) = tokio::join!(dispatch, drain);
        Published {
            accepted: run.accepted.get(),
            failed: run.failed.get(),
            fell_behind,
        }
    }

    /// Sends requests `0..requests` as fast as the connections allow (`body(i)` builds request `i`
    /// and says how many publications it holds), and returns once every one has been answered.
    pub async fn send(
        &self,
        requests: u64,
        mut body: impl FnMut(u64) -> (String, u64),
    ) -> Published {
        let run = Run::new(&mut body, (0..requests).collect());
        // Every ticket is issued already: the connections stop once they have taken them all.
        run.done.set(true);
        let mut connections = self.connections(&run);
        while connections.next().await.is_some() {}
        Published {
            accepted: run.accepted.get(),
            failed: run.failed.get(),
            fell_behind: false,
        }
    }

    /// The run's [`CONNECTIONS`] connections, spread over the nodes.
    fn connections<'a>(
        &'a self,
        run: &'a Run<'a>,
    ) -> FuturesUnordered<impl Future<Output = ()> + 'a> {
        self.addresses
            .iter()
            .cycle()
            .take(CONNECTIONS)
            .map(|address| self.connection(run, address))
            .collect()
    }

    /// One keep-alive connection to `address`: takes due tickets, sends them, reads their answers, until the
    /// run is done. A connection that fails counts what it held as failed and reconnects.
    async fn connection(&self, run: &Run<'_>, address: &str) {
        let mut socket: Option<HttpSocket> = None;
        let mut request = Vec::new();
        let mut counts = Vec::new();
        let mut statuses = Vec::new();
        loop {
            let taken: Vec<u64> = {
                let mut due = run.due.borrow_mut();
                let n = due.len().min(self.pipeline);
                due.drain(..n).collect()
            };
            if taken.is_empty() {
                if run.done.get() {
                    return;
                }
                run.queued.notified().await;
                continue;
            }
            request.clear();
            counts.clear();
            for i in taken {
                let (text, publications) = (run.body.borrow_mut())(i);
                counts.push(publications);
                let _ = write!(
                    request,
                    "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                    self.path,
                    address,
                    self.key,
                    text.len()
                );
            }
            if socket.is_none() {
                socket = HttpSocket::connect(address).await.ok();
            }
            statuses.clear();
            let exchanged = match socket.as_mut() {
                Some(s) => s.exchange(&request, counts.len(), &mut statuses).await,
                None => Err(std::io::ErrorKind::NotConnected.into()),
            };
            for ((status, refused), publications) in statuses.iter().zip(&counts) {
                // A batch is answered 200 with one result per publication, some of which may be
                // errors: those count as failed.
                let (accepted, failed) = if *status == 200 {
                    let refused = (*refused).min(*publications);
                    (publications - refused, refused)
                } else {
                    (0, *publications)
                };
                run.accepted.set(run.accepted.get() + accepted);
                run.failed.set(run.failed.get() + failed);
            }
            if exchanged.is_err() {
                // The requests that got no answer failed; the next ones reconnect.
                socket = None;
                let unanswered: u64 = counts[statuses.len().min(counts.len())..].iter().sum();
                run.failed.set(run.failed.get() + unanswered);
            }
        }
    }
}

/// An HTTP/1.1 client connection on a raw socket.
struct HttpSocket {
    fd: AsyncFd<std::net::TcpStream>,
    /// What has been read and not yet parsed into answers.
    buffer: Vec<u8>,
}

impl HttpSocket {
    async fn connect(address: &str) -> std::io::Result<HttpSocket> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(HttpSocket {
            fd: crate::fleet::register(stream.into_std()?)?,
            buffer: Vec::with_capacity(4096),
        })
    }

    /// Writes `request` (holding `count` requests) and reads `count` answers, appending their
    /// status codes, each with the number of `"error"` results in its body, to `statuses` as they
    /// arrive (so that a failure part way leaves the answers already read).
    async fn exchange(
        &mut self,
        request: &[u8],
        count: usize,
        statuses: &mut Vec<(u16, u64)>,
    ) -> std::io::Result<()> {
        crate::fleet::write_all(&self.fd, request).await?;
        loop {
            while statuses.len() < count {
                match parse_response(&self.buffer)? {
                    Some((status, used)) => {
                        let refused = self.buffer[..used]
                            .windows(7)
                            .filter(|w| w == b"\"error\"")
                            .count() as u64;
                        statuses.push((status, refused));
                        self.buffer.drain(..used);
                    }
                    None => break,
                }
            }
            if statuses.len() == count {
                return Ok(());
            }
            let mut guard = self.fd.readable().await?;
            let mut chunk = [0u8; 8192];
            match guard.try_io(|fd| fd.get_ref().read(&mut chunk)) {
                Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

/// The first whole response in `bytes`: its status and length, or `None` if it has not all
/// arrived. Responses without `Content-Length` (chunked) are not expected from the API.
fn parse_response(bytes: &[u8]) -> std::io::Result<Option<(u16, usize)>> {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let bad = || std::io::Error::other("malformed HTTP response");
    let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| bad())?;
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let length = head
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .ok_or_else(bad)?;
    let total = head_end + 4 + length;
    Ok((bytes.len() >= total).then_some((status, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelined_responses_whole_or_not_at_all() {
        let one =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\nhello";
        let mut two = one.to_vec();
        two.extend_from_slice(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\n\r\n{}");
        let (status, used) = parse_response(&two).expect("valid").expect("whole");
        assert_eq!((status, used), (200, one.len()));
        let (status, rest) = parse_response(&two[used..]).expect("valid").expect("whole");
        assert_eq!((status, rest), (429, two.len() - one.len()));
        assert!(parse_response(&one[..one.len() - 1])
            .expect("valid")
            .is_none());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }
}
