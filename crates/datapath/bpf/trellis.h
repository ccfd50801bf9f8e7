/* The datapath ABI: map keys, values and constants shared by the eBPF programs and the Rust
 * loader (crates/datapath/src/abi.rs mirrors every struct here, with size asserts, and a test
 * checks the sizes against the BTF of the compiled object).
 *
 * Byte order: addresses and ports are kept in network byte order, exactly as they sit in the
 * packet, so the programs never convert; the Rust side converts when it writes.
 * Every struct is laid out without implicit padding (explicit pad fields instead).
 */
#ifndef TRELLIS_H
#define TRELLIS_H

#include <linux/types.h>

/* Bounds of every map (named, one place). */
#define LB4_SERVICES_MAX 65536   /* frontend slots: masters + backend slots */
#define LB4_BACKENDS_MAX 65536
#define LB4_MAGLEV_CHUNK 1024    /* slots of a Maglev table per entry (a power of two) */
#define LB4_MAGLEV_MAX 65536     /* chunks over all external frontends (4 KiB each, as used) */
#define NAT4_MAX 262144          /* connection-tracking / NAT entries (two per connection) */
#define AFFINITY4_MAX 65536
#define INBOUND4_MAX 65536       /* connections opened towards local pods from outside */
#define NAT_PORT_TRIES 8         /* SNAT source-port probes before giving up */
/* A SYN-ACK applies a reply entry only if the connection's last SYN used the forward entry
 * within this window (a retransmitted SYN renews it). Ports are reused far later than this
 * except under heavy connection churn, where TIME_WAIT reuse needs a second at least. */
#define SYN_ACK_WINDOW_NS (1000000000ull)

/* Network policy (Cilium's model): the ipcache maps an address to the identity of its
 * longest prefix; each local endpoint has policy entries keyed by (endpoint, peer identity,
 * direction, protocol, port prefix); a packet is looked up with its peer's identity and with
 * the wildcard identity 0, and dropped if either says deny or neither allows. Replies of
 * connections a hook let through are recognised from policy connection tracking. */
#define IPCACHE4_MAX 65536
#define POLICY_MAX 262144        /* entries over all local endpoints */
#define ENDPOINTS4_MAX 4096      /* local endpoints */
#define POD_VETHS_MAX 16384      /* pod veths with their pod's address (LRU) */
#define POLICY_CT4_MAX 262144    /* tracked connections, one entry per direction seen */
#define POLICY_CT_TCP_NS (21600ull * 1000000000ull)  /* Cilium's TCP lifetime, 6 h */
#define POLICY_CT_OTHER_NS (60ull * 1000000000ull)   /* UDP and the rest, 60 s */
#define POLICY_CT_REFRESH_NS (1000000000ull)         /* a live entry is rewritten at most this often */
#define ID_WORLD 2
#define ID_ANY 0
#define POLICY_DIR_INGRESS 0
#define POLICY_DIR_EGRESS 1
/* Bits of a policy key that are always matched: endpoint, identity and direction. */
#define POLICY_KEY_FIXED_BITS 72
#define POLICY_KEY_FULL_BITS 96
#define POLICY_F_DENY 0x01
#define POLICY_F_PROTO 0x02   /* the entry names a protocol */
#define POLICY_F_PORT 0x04    /* ... and a port (or port prefix, or ICMP type) */
/* Hubble's policy_match_type of a verdict: which kind of entry decided it. */
#define POLICY_MATCH_NONE 0
#define POLICY_MATCH_L3_ONLY 1
#define POLICY_MATCH_L3_L4 2
#define POLICY_MATCH_L4_ONLY 3
#define POLICY_MATCH_ALL 4
#define POLICY_MATCH_L3_PROTO 5
#define POLICY_MATCH_PROTO_ONLY 6
#define RULE_DEFAULT_DENY 0xfffffffe   /* no rule allowed it (default deny) */

struct ipcache4_key {
	__u32 prefixlen;
	__u32 addr;
};

struct ipcache4_value {
	__u32 identity;
	__u32 pad;
};

#define EP_F_INGRESS 0x01   /* ingress is enforced (default deny) */
#define EP_F_EGRESS 0x02

/* Keyed by the endpoint's address. */
struct endpoint4 {
	__u32 identity;
	__u32 flags;
};

struct policy_key {
	__u32 prefixlen;
	__u32 ep;        /* the endpoint's address, as in the packet */
	__u32 identity;  /* the peer's identity, 0: any */
	__u8 dir;
	__u8 proto;      /* 0: any (then the port is not matched) */
	__u16 dport;     /* network byte order: prefixes are over its bits */
};

struct policy_value {
	__u32 rule;      /* the agent's rule index, for flows */
	__u32 flags;
};

/* A pod reaching itself through a service is SNATed to this address (Cilium uses the same
 * link-local one), so its reply leaves the pod and can be reverse-translated. */
#define HAIRPIN_IP4 0xa9fe2a01   /* 169.254.42.1, host byte order */

/* A frontend (address, port, protocol). slot 0 is the service's master entry; slots
 * 1..count name its backends (Cilium's layout). */
struct lb4_key {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
	__u16 slot;
	__u16 pad2;
};

#define SVC_F_EXTERNAL 0x01   /* reached from outside the cluster: Maglev selection */
#define SVC_F_AFFINITY 0x02   /* sessionAffinity: ClientIP */

/* Master (slot 0): id = frontend id, count = number of backend slots.
 * Backend slot (1..count): id = backend id, count unused. */
struct lb4_service {
	__u32 id;
	__u16 count;
	__u8 flags;
	__u8 pad;
	__u32 affinity_timeout_s;
};

#define BACKEND_F_LOCAL 0x01  /* the backend is a pod on this node */

struct lb4_backend {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 flags;
	__u32 node_ip;  /* the LAN address of the backend's node (DSR tunnels to it) */
};

/* A frontend's Maglev table in chunks of LB4_MAGLEV_CHUNK slots: slot i is in chunk
 * i / LB4_MAGLEV_CHUNK at i % LB4_MAGLEV_CHUNK. One entry per chunk, not per slot: a table of
 * M = 16381 is 16 entries, not 16381. A slot holding 0 falls back to the random choice. */
struct lb4_maglev_key {
	__u32 frontend_id;
	__u32 chunk;
};

struct lb4_maglev_chunk {
	__u32 backend_id[LB4_MAGLEV_CHUNK];
};

/* Connection tracking with NAT: a key per direction of a connection. */
#define NAT_DIR_FWD 0
#define NAT_DIR_REPLY 1

struct nat4_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

#define NAT_F_REDIRECT 0x01   /* after rewriting, send out through the FIB (source is ours) */
#define NAT_F_SNAT 0x02       /* source was rewritten to the node address */
#define NAT_F_MASQ 0x04       /* pod egress masquerade */
#define NAT_F_DSR 0x08        /* forwarded to the backend's node in IP-in-IP; replies go direct */

/* The packet is rewritten to this tuple. */
struct nat4_entry {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u32 backend_id;
	__u32 flags;
	__u32 tunnel;   /* NAT_F_DSR: the outer destination (the backend's node) */
	__u64 last_seen_ns;  /* forward entries: the last SYN; reply entries: the last packet */
};

struct affinity4_key {
	__u32 client;
	__u32 frontend_id;
};

struct affinity4_value {
	__u32 backend_id;
	__u32 pad;
	__u64 last_seen_ns;
};

/* A connection opened from outside the cluster towards a local pod; its replies are not
 * masqueraded. Keyed as the pod's reply would be seen. */
struct inbound4_key {
	__u32 pod;
	__u32 remote;
	__u16 pod_port;
	__u16 remote_port;
	__u8 proto;
	__u8 pad;
	__u16 pad2;
};

/* One entry (index 0) of per-node settings, written by the agent. */
struct node_config {
	__u32 node_ip;
	__u32 cluster_cidr_addr;  /* native routing CIDR: no masquerade inside it */
	__u32 cluster_cidr_mask;
	__u32 maglev_m;
	__u32 flags;
	__u32 pad;
};

#define NODE_F_MASQUERADE 0x01
#define NODE_F_DSR 0x02         /* loadBalancer.mode dsr: external traffic to remote backends */
#define NODE_F_DSR_TCP_ONLY 0x04 /* hybrid: DSR for TCP, SNAT for UDP */
#define NODE_F_EVENTS 0x08      /* someone reads the flow events: emit them */

/* Flow events for observe: new service connections, masquerade decisions and drops, one
 * record each in a ring buffer the agent reads. */
#define EVENTS_RING_BYTES (256 * 1024)
#define EVENTS_WAKEUP_BYTES (64 * 1024) /* the reader is woken when this much waits */
#define EVENTS_DRAIN_MS 100             /* ... and drains by itself this often (agent) */
#define EVENT_DROP 1           /* Cilium monitor type: drop */
#define EVENT_TRACE 4          /* Cilium monitor type: trace */
#define EVENT_POLICY_VERDICT 5 /* Cilium monitor type: policy verdict (a new connection let
                                * through an enforced direction) */
#define POINT_FROM_POD 1       /* where: the hook that saw the packet */
#define POINT_TO_POD 2
#define POINT_FROM_NETDEV 3
#define POINT_TO_NETDEV 4
#define DROP_NAT_FAILED 155    /* Hubble's reason numbers where one fits: CT_MAP_INSERTION_FAILED */
#define DROP_INVALID_SIP 132   /* INVALID_SOURCE_IP: a pod sent from an address not its own */
#define DROP_UNSUPPORTED_L3 139 /* UNSUPPORTED_L3_PROTOCOL: IPv6 to or from a pod (IPv4 only) */
#define DROP_NO_SERVICE 158    /* SERVICE_BACKEND_NOT_FOUND */
#define DROP_DSR_LOOP 195      /* unwrapped DSR packet whose backend is not local (a number
                                * Hubble leaves unnamed: 181 is its POLICY_DENY) */
#define DROP_POLICY 133        /* POLICY_DENIED */

struct flow_event {
	__u64 time_ns;     /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
	__u32 saddr;
	__u32 daddr;
	__u16 sport;       /* ICMP: the type */
	__u16 dport;       /* ICMP: the code */
	__u8 proto;
	__u8 kind;         /* EVENT_* */
	__u8 tcp_flags;
	__u8 point;        /* POINT_* */
	__u32 reason;      /* drop reason, 0 for traces */
	__u32 ifindex;
	__u32 nat_daddr;   /* the backend a new service connection went to (0: none) */
	__u16 nat_dport;
	__u16 match_type;  /* policy drops and verdicts: POLICY_MATCH_* */
	__u32 rule;        /* policy drops and verdicts: the rule that decided, or
	                    * RULE_DEFAULT_DENY */
	__u32 identity;    /* policy drops and verdicts: the peer's identity */
};

/* Counters, index by enum stat; per-CPU array. */
enum stat {
	STAT_PACKETS = 0,
	STAT_SERVICE_NEW,       /* new connection to a service frontend */
	STAT_NAT_HIT,           /* packet rewritten from an existing entry */
	STAT_NO_BACKEND,        /* frontend found but no backend slot / backend entry */
	STAT_NAT_FULL,          /* no free SNAT port or NAT map update failed */
	STAT_MASQ_NEW,
	STAT_EVENTS_LOST,       /* the ring buffer was full: the event is counted, not sent */
	STAT_POLICY_DROP,       /* dropped by network policy */
	STAT_POLICY_CT_FULL,    /* a policy connection-tracking entry could not be written */
	STAT_POLICY_VERDICT,    /* new connections let through an enforced direction */
	STAT_SPOOFED,           /* packets from a pod with a source address not its own */
	STAT_UNSUPPORTED_L3,    /* IPv6 (or other non-IPv4, non-ARP) packets to or from a pod */
	STAT_MAX,
};

#endif
