//! The plugin and the node agent on Kubernetes, over the agent's Unix socket (`agentSocket`
//! in the network configuration). The plugin has no API client: it asks the agent, which
//! watches the API, for a pod's attachments (its `k8s.v1.cni.cncf.io/networks` annotation
//! resolved against the NetworkAttachmentDefinitions), and after ADD hands the agent the
//! pod's network-status for the agent to write on the Pod, as Multus does.
//!
//! One JSON line each way per connection. The pod is named by the `K8S_POD_NAMESPACE` and
//! `K8S_POD_NAME` the kubelet puts in `CNI_ARGS`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conf::CmdArgs;
use crate::error::Error;
use crate::multus::Network;

/// How long the plugin waits for the agent (which itself waits up to
/// [`POD_WAIT`] for a pod it has not seen yet).
pub const TIMEOUT: Duration = Duration::from_secs(15);
/// How long the agent waits for a pod to reach its snapshot before answering "try again".
pub const POD_WAIT: Duration = Duration::from_secs(10);
/// The longest line either side reads.
pub const LINE_BYTES_MAX: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// The pod's attachments.
    Networks { namespace: String, name: String },
    /// The pod's network-status after ADD (Multus's annotation value, as a list).
    #[serde(rename_all = "camelCase")]
    Status {
        namespace: String,
        name: String,
        network_status: Vec<Value>,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub networks: Vec<Network>,
    /// Why the request could not be served (the pod is unknown, an annotation is wrong).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The pod `CNI_ARGS` names (namespace, name), when the kubelet named one.
pub fn pod_of(args: &CmdArgs) -> Option<(String, String)> {
    let get = |k: &str| {
        args.args
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    Some((get("K8S_POD_NAMESPACE")?, get("K8S_POD_NAME")?))
}

/// Asks the agent; an agent that cannot be reached or answers an error is "try again" (the
/// kubelet retries the sandbox), never a pod started without the attachments it asked for.
pub fn ask(socket: &Path, req: &Request) -> Result<Reply, Error> {
    let again = |what: String| Error::TryAgain {
        what: format!("the node agent at {}: {what}", socket.display()),
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| again(e.to_string()))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| again(e.to_string()))?;
    let mut line = serde_json::to_string(req).map_err(Error::Decode)?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| again(e.to_string()))?;
    let mut answer = String::new();
    std::io::Read::take(BufReader::new(stream), LINE_BYTES_MAX)
        .read_line(&mut answer)
        .map_err(|e| again(e.to_string()))?;
    let reply: Reply = serde_json::from_str(&answer).map_err(|e| again(format!("{e}")))?;
    match reply.error {
        Some(e) => Err(again(e)),
        None => Ok(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_back_and_the_pod_comes_from_cni_args() {
        let r = Request::Status {
            namespace: "home".into(),
            name: "ha".into(),
            network_status: vec![serde_json::json!({"name": "trellis"})],
        };
        let text = serde_json::to_string(&r).expect("serializes");
        assert!(
            text.contains(r#""op":"status""#) && text.contains("networkStatus"),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Request>(&text).expect("reads"), r);
        let args = CmdArgs {
            container_id: "c".into(),
            netns: None,
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), "home".into()),
                ("K8S_POD_NAME".into(), "ha".into()),
            ],
            path: vec![],
        };
        assert_eq!(pod_of(&args), Some(("home".into(), "ha".into())));
        let e = ask(Path::new("/nonexistent/agent.sock"), &r).expect_err("no agent");
        assert_eq!(
            e.code(),
            Error::TryAgain {
                what: String::new()
            }
            .code()
        );
    }
}
