//! Arbitrary network configurations (stdin) and `CNI_*` environments as `trellis-cni`
//! reads them: `NetConf::parse`, `prevResult`, `CmdArgs::from_env`, and the plugin's whole
//! run for what needs no system (VERSION, and every command whose configuration is refused
//! before anything is touched).
//!
//! - A configuration that parses is valid (pool prefix, absolute paths, MTU range) and reads
//!   back the same after being written; so does its `prevResult`.
//! - A refused configuration makes every command fail with the error code `parse` gave.
//! - Bytes that parse as a Multus networks annotation resolve to networks a configuration
//!   accepts (or are refused).
//! - Accepted environments hold what the spec allows (container ID, interface name, netns).
#![no_main]

use std::collections::BTreeMap;

use cni::conf::{
    Command, IFNAME_LEN_MAX, NetConf, POOL_PREFIX_LEN_MAX, POOL_PREFIX_LEN_MIN, peek_version,
};
use cni::{CmdArgs, CniResult, ErrorReply};
use libfuzzer_sys::fuzz_target;

const VARS: &[&str] = &[
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];
const COMMANDS: &[&str] = &["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "add", ""];

fuzz_target!(|input: (u8, Vec<(u8, String)>, Vec<u8>)| {
    let (command, vars, stdin) = input;
    let env: BTreeMap<&str, String> = vars
        .into_iter()
        .map(|(k, v)| (VARS[usize::from(k) % VARS.len()], v))
        .collect();
    let env = |k: &str| env.get(k).cloned();

    let version = cni::execute(Some("VERSION"), env, &stdin).expect("VERSION always answers");
    if let Some(v) = peek_version(&stdin) {
        assert_eq!(version["cniVersion"], v.as_str());
    }
    match NetConf::parse(&stdin) {
        Ok(conf) => {
            let prefix = conf.pool_cidr().prefix_len();
            assert!((POOL_PREFIX_LEN_MIN..=POOL_PREFIX_LEN_MAX).contains(&prefix));
            assert!(conf.state_dir.is_absolute());
            assert!((68..=65535).contains(&conf.mtu()));
            let text = serde_json::to_vec(&conf).expect("a configuration serializes");
            let again = NetConf::parse(&text).expect("a written configuration parses");
            assert_eq!(
                serde_json::to_value(&again).expect("serializes"),
                serde_json::to_value(&conf).expect("serializes")
            );
            if let Ok(Some(prev)) = conf.prev_result() {
                let text = serde_json::to_vec(&prev).expect("a result serializes");
                let back: CniResult = serde_json::from_slice(&text).expect("and reads back");
                assert_eq!(back, prev);
            }
        }
        Err(e) => {
            let code = e.code();
            let reply = ErrorReply::new(cni::conf::LATEST_VERSION, &e);
            serde_json::to_string(&reply).expect("an error reply serializes");
            // Nothing is touched for a configuration that does not parse.
            let name = COMMANDS[usize::from(command) % COMMANDS.len()];
            if name != "VERSION" {
                let failed = cni::execute(Some(name), env, &stdin).expect_err("refused");
                if Command::parse(name).is_some() {
                    assert_eq!(failed.code, code);
                }
            }
        }
    }
    // The same bytes as a pod's `k8s.v1.cni.cncf.io/networks` annotation: what parses resolves
    // to networks a configuration accepts, or is refused with a reason.
    if let Ok(text) = std::str::from_utf8(&stdin)
        && let Ok(selections) = cni::multus::parse_networks(text, "ns")
    {
        let nad = r#"{"cniVersion":"0.3.1","name":"n","plugins":[{"type":"macvlan"}]}"#;
        if let Ok(networks) = cni::multus::resolve(&selections, |_, _| Some(nad.into())) {
            assert_eq!(networks.len(), selections.len());
            assert!(cni::multus::check_networks(&networks).is_empty());
        }
    }
    for command in [Command::Add, Command::Del, Command::Check] {
        let Ok(args) = CmdArgs::from_env(command, env) else {
            continue;
        };
        let id = &args.container_id;
        assert!(id.starts_with(|c: char| c.is_ascii_alphanumeric()));
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        );
        assert!(!args.ifname.is_empty() && args.ifname.len() <= IFNAME_LEN_MAX);
        assert!(!args.ifname.contains('/'));
        assert!(args.netns.is_some() || command == Command::Del);
    }
});
