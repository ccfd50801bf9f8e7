//! Hubble's Observer service over tonic: GetFlows (stored flows, then new ones with
//! `follow`), ServerStatus and GetNodes for this one process.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::filter::FilterSet;
use crate::hub::{Event, Hub, Observer};
use crate::proto::flow::{LostEvent, LostEventSource};
use crate::proto::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNodesRequest, GetNodesResponse, Node,
    ServerStatusRequest, ServerStatusResponse, get_flows_response::ResponseTypes,
    observer_server::ObserverServer,
};
use crate::proto::relay::NodeState;

/// Responses queued per GetFlows stream; a slower client makes the stream wait, and when
/// the ring overwrites what it has not read yet it gets a `LostEvent`.
pub const STREAM_QUEUED_MAX: usize = 256;
/// Entries a following stream copies out of the ring per lock.
const FOLLOW_BATCH_MAX: usize = 1024;
/// Concurrent GetFlows streams per process.
pub const STREAMS_MAX: usize = 64;

const VERSION: &str = concat!("trellis ", env!("CARGO_PKG_VERSION"));

/// The Observer service of one process.
#[derive(Clone)]
pub struct Service {
    hub: Arc<Hub>,
    address: String,
    streams: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Service {
    pub fn new(observer: &Observer, address: String) -> Service {
        Service {
            hub: observer.hub.clone(),
            address,
            streams: Arc::new(tokio::sync::Semaphore::new(STREAMS_MAX)),
        }
    }
}

/// Serves the Observer API on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    observer: &Observer,
) -> Result<(), tonic::transport::Error> {
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let svc = Service::new(observer, address);
    tonic::transport::Server::builder()
        .add_service(ObserverServer::new(svc))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await
}

/// Binds `addr` and serves the Observer API there in a task; returns the bound address.
pub async fn spawn(addr: SocketAddr, observer: &Observer) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let observer = observer.clone();
    tokio::spawn(async move {
        if let Err(e) = serve(listener, &observer).await {
            tracing::warn!(error = %e, "observer API stopped");
        }
    });
    Ok(local)
}

fn response(hub: &Hub, e: &Event) -> GetFlowsResponse {
    match (e, e.flow()) {
        (_, Some(f)) => GetFlowsResponse {
            node_name: f.node_name.clone(),
            time: f.time,
            response_types: Some(ResponseTypes::Flow(f.clone())),
        },
        (Event::Lost(l, t), None) => GetFlowsResponse {
            node_name: hub.node_name.clone(),
            time: Some(*t),
            response_types: Some(ResponseTypes::LostEvents(*l)),
        },
        (_, None) => GetFlowsResponse::default(),
    }
}

type Tx = mpsc::Sender<Result<GetFlowsResponse, Status>>;

/// What one GetFlows request selects.
struct Selection {
    filters: FilterSet,
    since: Option<i128>,
    until: Option<i128>,
}

impl Selection {
    fn passes(&self, e: &Event) -> bool {
        let t = e.time().map_or(0, crate::time::nanos);
        if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t > u) {
            return false;
        }
        // Losses are always shown: they say the stream is incomplete.
        e.flow().is_none_or(|f| self.filters.matches(f))
    }
}

async fn stream_flows(hub: Arc<Hub>, req: GetFlowsRequest, sel: Selection, tx: Tx) {
    let mut tip = hub.subscribe();
    let (history, mut cursor) = hub.snapshot();
    // `follow` alone streams only new flows; with `number` or `since` the stored ones first.
    let replay = !req.follow || req.number > 0 || req.since.is_some();
    if replay {
        let mut chosen: Vec<&Event> = history.iter().filter(|e| sel.passes(e)).collect();
        let n = usize::try_from(req.number).unwrap_or(usize::MAX);
        if n > 0 && chosen.len() > n {
            if req.first {
                chosen.truncate(n);
            } else {
                chosen.drain(..chosen.len() - n);
            }
        }
        for e in chosen {
            if tx.send(Ok(response(&hub, e))).await.is_err() {
                return;
            }
        }
    }
    drop(history);
    if !req.follow {
        return;
    }
    loop {
        let (events, missed) = hub.read_from(&mut cursor, FOLLOW_BATCH_MAX);
        if missed > 0 {
            hub.metrics.lost(LostEventSource::HubbleRingBuffer, missed);
            let lost = Event::Lost(
                LostEvent {
                    source: LostEventSource::HubbleRingBuffer as i32,
                    num_events_lost: missed,
                    cpu: None,
                },
                crate::time::now(),
            );
            if tx.send(Ok(response(&hub, &lost))).await.is_err() {
                return;
            }
        }
        if events.is_empty() {
            tokio::select! {
                changed = tip.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            continue;
        }
        for e in events {
            let t = e.time().map_or(0, crate::time::nanos);
            if sel.until.is_some_and(|u| t > u) {
                return;
            }
            if sel.passes(&e) && tx.send(Ok(response(&hub, &e))).await.is_err() {
                return;
            }
        }
    }
}

impl Service {
    /// Starts a GetFlows stream: checks the request, takes one of the [`STREAMS_MAX`]
    /// streams, and returns what the stream sends (the gRPC service and the web UI both read
    /// flows through here).
    pub fn open(&self, req: GetFlowsRequest) -> Result<FlowReceiver, Status> {
        if req.first && req.follow {
            return Err(Status::invalid_argument(
                "first cannot be combined with follow",
            ));
        }
        let filters = FilterSet::new(&req.whitelist, &req.blacklist).map_err(|e| match e {
            crate::FilterError::Unsupported(_) => Status::unimplemented(e.to_string()),
            _ => Status::invalid_argument(e.to_string()),
        })?;
        let permit = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("too many GetFlows streams"))?;
        let sel = Selection {
            filters,
            since: req.since.as_ref().map(crate::time::nanos),
            until: req.until.as_ref().map(crate::time::nanos),
        };
        let (tx, rx) = mpsc::channel(STREAM_QUEUED_MAX);
        let hub = self.hub.clone();
        tokio::spawn(async move {
            stream_flows(hub, req, sel, tx).await;
            drop(permit);
        });
        Ok(rx)
    }
}

/// The responses of one GetFlows stream, as [`Service::open`] returns them.
pub type FlowReceiver = mpsc::Receiver<Result<GetFlowsResponse, Status>>;

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl crate::proto::observer::observer_server::Observer for Service {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<FlowStream>, Status> {
        let rx = self.open(request.into_inner())?;
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let s = self.hub.status();
        Ok(Response::new(GetNodesResponse {
            nodes: vec![Node {
                name: self.hub.node_name.clone(),
                version: VERSION.into(),
                address: self.address.clone(),
                state: NodeState::NodeConnected as i32,
                tls: None,
                uptime_ns: s.uptime_ns,
                num_flows: s.num_flows,
                max_flows: s.max_flows,
                seen_flows: s.seen_flows,
            }],
        }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let s = self.hub.status();
        Ok(Response::new(ServerStatusResponse {
            num_flows: s.num_flows,
            max_flows: s.max_flows,
            seen_flows: s.seen_flows,
            uptime_ns: s.uptime_ns,
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            unavailable_nodes: Vec::new(),
            version: VERSION.into(),
            lost_events: s.lost_events,
        }))
    }
}
