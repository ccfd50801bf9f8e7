//! etcd's v3 API over gRPC, with the messages of `proto/etcd.proto` (tonic, no etcd client
//! crate: its build needs protoc). One lazily connected channel per member: a call goes to
//! the member that answered last, and to the next one when a member cannot be connected to
//! (the request was never sent, so trying elsewhere is safe); a member that takes the request
//! and does not answer (no quorum) ends the call in [`Error::Unavailable`] at the request
//! timeout, as the outcome is then unknown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use super::{Backend, BoxFuture, Error, Event, Kv, LeaseId, Listing, Watch};

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::watch_client::WatchClient;

/// How long one call may take before it is [`Error::Unavailable`] (a lost quorum makes
/// etcd hold requests; this bounds that).
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// How long connecting to one member may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Changes a slow watcher may have queued before it is ended (it lists again).
const WATCH_QUEUE: usize = 1024;

/// A client of one etcd cluster.
#[derive(Clone)]
pub struct Etcd {
    /// One per member, in the order given.
    channels: Vec<Channel>,
    /// The member that answered last.
    current: Arc<AtomicUsize>,
    timeout: Duration,
}

/// Whether a call failed before its request reached a member (no connection could be made):
/// only then is it sent to another member.
fn not_sent(e: &tonic::Status) -> bool {
    e.code() == tonic::Code::Unavailable && e.message().contains("connect")
}

fn status(e: tonic::Status) -> Error {
    use tonic::Code;
    let msg = e.message().to_string();
    match e.code() {
        Code::OutOfRange if msg.contains("compacted") => Error::Compacted(0),
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::ResourceExhausted => Error::Refused(format!("{:?}: {msg}", e.code())),
        _ => Error::Unavailable(format!("{:?}: {msg}", e.code())),
    }
}

/// The end of a prefix range: the prefix with its last byte incremented.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn kv(k: pb::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(&k.key).into_owned(),
        value: k.value,
        mod_revision: k.mod_revision,
        lease: k.lease,
    }
}

impl Etcd {
    /// A client over `endpoints` (`host:port`). Connections are made lazily, so an endpoint
    /// that is down now does not stop the client; the first call says whether any answers.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Etcd, Error> {
        let list: Result<Vec<Endpoint>, Error> = endpoints
            .iter()
            .map(|e| {
                let url = if e.contains("://") {
                    e.clone()
                } else {
                    format!("http://{e}")
                };
                Endpoint::from_shared(url.clone())
                    .map(|ep| {
                        ep.connect_timeout(CONNECT_TIMEOUT)
                            .timeout(timeout)
                            .tcp_nodelay(true)
                    })
                    .map_err(|e| Error::Refused(format!("etcd endpoint {url:?}: {e}")))
            })
            .collect();
        let channels: Vec<Channel> = list?.into_iter().map(|e| e.connect_lazy()).collect();
        if channels.is_empty() {
            return Err(Error::Refused("no etcd endpoint".into()));
        }
        Ok(Etcd {
            channels,
            current: Arc::new(AtomicUsize::new(0)),
            timeout,
        })
    }

    /// A call bounded by the request timeout: to the member that answered last, then to the
    /// next ones while none can be connected to.
    async fn call<T, Fut>(&self, f: impl Fn(Channel) -> Fut) -> Result<T, Error>
    where
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let n = self.channels.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let at = (first + i) % n;
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, f(self.channels[at].clone())).await {
                Ok(Ok(r)) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                Ok(Err(e)) if not_sent(&e) => last = Some(status(e)),
                Ok(Err(e)) => return Err(status(e)),
                Err(_) => break,
            }
        }
        Err(last
            .unwrap_or_else(|| Error::Unavailable(format!("no answer within {:?}", self.timeout))))
    }

    /// One Range call.
    async fn range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, Error> {
        self.call(|ch| {
            let req = req.clone();
            async move { KvClient::new(ch).range(req).await }
        })
        .await
    }

    /// One Txn call; whether its comparisons held (and its success ops were applied).
    async fn txn(&self, req: pb::TxnRequest) -> Result<bool, Error> {
        let r = self
            .call(|ch| {
                let req = req.clone();
                async move { KvClient::new(ch).txn(req).await }
            })
            .await?;
        Ok(r.succeeded)
    }

    async fn txn_put(
        &self,
        key: &str,
        compare: pb::Compare,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<bool, Error> {
        super::check_value(key, value)?;
        let put = pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.to_vec(),
                lease: lease.unwrap_or(0),
                prev_kv: false,
            })),
        };
        let req = pb::TxnRequest {
            compare: vec![compare],
            success: vec![put],
            failure: Vec::new(),
        };
        self.txn(req).await
    }
}

fn mod_is(key: &str, revision: i64) -> pb::Compare {
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(TargetUnion::ModRevision(revision)),
        range_end: Vec::new(),
    }
}

fn absent(key: &str) -> pb::Compare {
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(TargetUnion::CreateRevision(0)),
        range_end: Vec::new(),
    }
}

impl Backend for Etcd {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Kv>, Error>> {
        Box::pin(async move {
            let req = pb::RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            };
            let r = self.range(req).await?;
            Ok(r.kvs.into_iter().next().map(kv))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, Error>> {
        Box::pin(async move {
            let req = pb::RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: range_end(prefix),
                ..Default::default()
            };
            let r = self.range(req).await?;
            Ok(Listing {
                revision: r.header.map_or(0, |h| h.revision),
                kvs: r.kvs.into_iter().map(kv).collect(),
            })
        })
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { self.txn_put(key, absent(key), value, lease).await })
    }

    fn swap<'a>(
        &'a self,
        key: &'a str,
        revision: i64,
        value: &'a [u8],
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let cmp = if revision == 0 {
                absent(key)
            } else {
                mod_is(key, revision)
            };
            self.txn_put(key, cmp, value, lease).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str, revision: i64) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let del = pb::RequestOp {
                request: Some(pb::request_op::Request::RequestDeleteRange(
                    pb::DeleteRangeRequest {
                        key: key.as_bytes().to_vec(),
                        ..Default::default()
                    },
                )),
            };
            let req = pb::TxnRequest {
                compare: vec![mod_is(key, revision)],
                success: vec![del],
                failure: Vec::new(),
            };
            self.txn(req).await
        })
    }

    fn grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, Error>> {
        Box::pin(async move {
            let req = pb::LeaseGrantRequest {
                ttl: super::ttl_secs(ttl),
                id: 0,
            };
            let r = self
                .call(|ch| async move { LeaseClient::new(ch).lease_grant(req).await })
                .await?;
            if !r.error.is_empty() {
                return Err(Error::Refused(r.error));
            }
            Ok(r.id)
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<Option<Duration>, Error>> {
        Box::pin(async move {
            // One request on the keep-alive stream, one answer (etcdctl's `keep-alive --once`).
            let mut answers = self
                .call(|ch| async move {
                    let out = futures_util::stream::iter([pb::LeaseKeepAliveRequest { id: lease }]);
                    LeaseClient::new(ch).lease_keep_alive(out).await
                })
                .await?;
            let r = tokio::time::timeout(self.timeout, answers.message())
                .await
                .map_err(|_| Error::Unavailable("no keep-alive answer".into()))?
                .map_err(status)?
                .ok_or_else(|| Error::Unavailable("the keep-alive stream ended".into()))?;
            Ok((r.ttl > 0).then(|| Duration::from_secs(r.ttl.unsigned_abs())))
        })
    }

    fn revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let req = pb::LeaseRevokeRequest { id: lease };
            match self
                .call(|ch| async move { LeaseClient::new(ch).lease_revoke(req).await })
                .await
            {
                // Already gone is what was asked for.
                Err(Error::Refused(m)) if m.contains("not found") => Ok(()),
                r => r.map(|_| ()),
            }
        })
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: i64) -> BoxFuture<'a, Result<Watch, Error>> {
        Box::pin(async move {
            let create = pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: prefix.as_bytes().to_vec(),
                        range_end: range_end(prefix),
                        start_revision: after + 1,
                        progress_notify: false,
                        prev_kv: false,
                    },
                )),
            };
            // The request stream stays open for the life of the watch (closing it ends it):
            // each attempt makes its own, and the one of the attempt that was answered is kept.
            let keeper = std::sync::Mutex::new(None);
            // No request timeout on the stream itself: only on its first answer.
            let mut stream = self
                .call(|ch| {
                    let (keep, rx) = tokio::sync::mpsc::channel::<pb::WatchRequest>(1);
                    let _ = keep.try_send(create.clone());
                    *keeper.lock().unwrap_or_else(|p| p.into_inner()) = Some(keep);
                    let out = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|r| (r, rx))
                    });
                    async move { WatchClient::new(ch).watch(out).await }
                })
                .await?;
            let keep = keeper.lock().unwrap_or_else(|p| p.into_inner()).take();
            // The first answer says the watch was created, or why not.
            let first = tokio::time::timeout(self.timeout, stream.message())
                .await
                .map_err(|_| Error::Unavailable("the watch was not created".into()))?
                .map_err(status)?
                .ok_or_else(|| Error::Unavailable("the watch stream ended".into()))?;
            if first.compact_revision > 0 {
                return Err(Error::Compacted(first.compact_revision));
            }
            if first.canceled {
                return Err(Error::Refused(first.cancel_reason));
            }
            let (tx, rx) = tokio::sync::mpsc::channel(WATCH_QUEUE);
            let mut pending = first.events;
            tokio::spawn(async move {
                let _keep = keep;
                loop {
                    if !pending.is_empty() {
                        let batch = std::mem::take(&mut pending)
                            .into_iter()
                            .filter_map(|e| {
                                let kind = e.r#type;
                                let k = e.kv?;
                                Some(if kind == pb::event::EventType::Delete as i32 {
                                    Event::Delete {
                                        key: String::from_utf8_lossy(&k.key).into_owned(),
                                        revision: k.mod_revision,
                                    }
                                } else {
                                    Event::Put(kv(k))
                                })
                            })
                            .collect::<Vec<_>>();
                        if tx.send(Ok(batch)).await.is_err() {
                            return;
                        }
                    }
                    // A watcher that went away ends the stream now, not at the next event.
                    let message = tokio::select! {
                        m = stream.message() => m,
                        () = tx.closed() => return,
                    };
                    match message {
                        Ok(Some(r)) if r.compact_revision > 0 => {
                            let _ = tx.send(Err(Error::Compacted(r.compact_revision))).await;
                            return;
                        }
                        Ok(Some(r)) if r.canceled => {
                            let _ = tx.send(Err(Error::Refused(r.cancel_reason))).await;
                            return;
                        }
                        Ok(Some(r)) => pending = r.events,
                        Ok(None) => {
                            let _ = tx
                                .send(Err(Error::Unavailable("the watch stream ended".into())))
                                .await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(status(e))).await;
                            return;
                        }
                    }
                }
            });
            Ok(Watch { events: rx })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_end() {
        assert_eq!(range_end("/trellis/v1/"), b"/trellis/v10".to_vec());
        assert_eq!(range_end("ab"), b"ac".to_vec());
        assert_eq!(range_end(""), vec![0]);
    }
}
