/* Service load balancing, connection tracking with NAT, and pod masquerade, as tc programs.
 *
 *   from_pod     ingress of a pod's host-side veth (packets leaving the pod)
 *   to_pod       egress of a pod's host-side veth (packets entering the pod)
 *   from_netdev  ingress of the node's LAN device
 *   to_netdev    egress of the node's LAN device
 *
 * A new connection to a frontend (ClusterIP, NodePort, LoadBalancer address) picks a backend
 * (random for traffic from pods, Maglev for traffic from outside, a remembered one under
 * sessionAffinity) and installs two NAT entries: the forward tuple and the reply tuple. Every
 * later packet of the connection is rewritten from those entries, so a connection stays on its
 * backend while the service's backends change. Traffic from outside to a backend on another
 * node is also SNATed to the node address so its replies return here (no DSR yet).
 *
 * Network policy is enforced at the pod's veth: its egress in from_pod (after service
 * translation, on the backend's address), its ingress in to_pod (before reply translation,
 * on the addresses as they travel). The agent compiles the entries; this only looks them up.
 *
 * A pod's veth passes IPv4 and ARP only (IPv6 would pass policy unchecked), and IPv4 from
 * the pod's own address only.
 *
 * What is not here: policy decisions (the agent compiles them into the maps), IPv6, ICMP
 * error translation. Frontends without backends are not in the maps at all: the node's
 * routing answers them (an unreachable route for the service CIDR, RST for node ports).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "trellis.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB4_SERVICES_MAX);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB4_BACKENDS_MAX);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB4_MAGLEV_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb4_maglev_key);
	__type(value, struct lb4_maglev_chunk);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb4_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NAT4_MAX);
	__type(key, struct nat4_key);
	__type(value, struct nat4_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, AFFINITY4_MAX);
	__type(key, struct affinity4_key);
	__type(value, struct affinity4_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} affinity4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, INBOUND4_MAX);
	__type(key, struct inbound4_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inbound4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} node_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, IPCACHE4_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache4_key);
	__type(value, struct ipcache4_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ENDPOINTS4_MAX);
	__type(key, __u32);
	__type(value, struct endpoint4);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, POLICY_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, POLICY_CT4_MAX);
	__type(key, struct nat4_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_ct4 SEC(".maps");

/* The address of the pod behind each host-side veth, by the veth's ifindex (written by the CNI
 * plugin when it attaches the programs): from_pod drops what a pod sends from another
 * address. LRU: an entry a failed DEL left behind goes, never a new pod's attach. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, POD_VETHS_MAX);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pod_veth4 SEC(".maps");

/* Only the ring buffer carries flow_event values, and a ring buffer has no value type: this
 * variable puts the struct into the object's BTF so its layout can be checked from Rust. It is
 * in a section of its own, not .bss, so no data map is made for it. */
struct flow_event trellis_abi_flow_event SEC(".trellis.abi");

struct tuple {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u16 l4off;
	__u8 no_ports;
	__u8 icmp_type; /* ICMP (IPv4): policy looks it up where ports go */
	__u8 icmp_code;
	__u16 icmp_id;  /* ICMP echo and echo reply: conntrack pairs them by it */
};

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10
#define IP_OFF 14 /* after the Ethernet header */
#define IP_CSUM_OFF (IP_OFF + 10)
#define IP_SRC_OFF (IP_OFF + 12)
#define IP_DST_OFF (IP_OFF + 16)

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &which);
	if (v)
		*v += 1;
}

static __always_inline void emit_full(struct __sk_buff *skb, const struct tuple *t, __u8 kind,
				      __u8 point, __u32 reason, __u32 nat_daddr, __u16 nat_dport,
				      __u32 rule, __u32 identity, __u16 match_type)
{
	struct flow_event *e;
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&node_config, &zero);

	/* Nobody reads flows: no events (and no cost). */
	if (!cfg || !(cfg->flags & NODE_F_EVENTS))
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_EVENTS_LOST);
		return;
	}
	e->time_ns = bpf_ktime_get_ns();
	e->saddr = t->saddr;
	e->daddr = t->daddr;
	/* ICMP: its type and code where the ports go (as Hubble shows them). */
	e->sport = t->proto == IPPROTO_ICMP ? bpf_htons(t->icmp_type) : t->sport;
	e->dport = t->proto == IPPROTO_ICMP ? bpf_htons(t->icmp_code) : t->dport;
	e->proto = t->proto;
	e->kind = kind;
	e->tcp_flags = t->tcp_flags;
	e->point = point;
	e->reason = reason;
	e->ifindex = skb->ifindex;
	e->nat_daddr = nat_daddr;
	e->nat_dport = nat_dport;
	e->match_type = match_type;
	e->rule = rule;
	e->identity = identity;
	/* The reader is woken only once the ring holds EVENTS_WAKEUP_BYTES; otherwise it drains
	 * on its own every EVENTS_DRAIN_MS. A wakeup per event cost the reader two context
	 * switches per new connection, on the cores the connections use. */
	bpf_ringbuf_submit(e, bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= EVENTS_WAKEUP_BYTES ?
				      BPF_RB_FORCE_WAKEUP :
				      BPF_RB_NO_WAKEUP);
}

static __always_inline void emit(struct __sk_buff *skb, const struct tuple *t, __u8 kind,
				 __u8 point, __u32 reason, __u32 nat_daddr, __u16 nat_dport)
{
	emit_full(skb, t, kind, point, reason, nat_daddr, nat_dport, 0, 0, POLICY_MATCH_NONE);
}

static __always_inline struct node_config *config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&node_config, &zero);
}

/* Reads the tuple of any IPv4 packet: ports for TCP, UDP and SCTP (0 for other protocols, and
 * with `no_ports` set for later fragments or ports that cannot be read). Returns 0 for IPv4,
 * -1 for anything else. Policy looks at every IPv4 packet. */
static __always_inline int parse_any(struct __sk_buff *skb, struct tuple *t)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + IP_OFF;
	__u16 ports[2];

	if ((void *)(ip + 1) > data_end)
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->version != 4 || ip->ihl < 5)
		return -1;
	t->saddr = ip->saddr;
	t->daddr = ip->daddr;
	t->proto = ip->protocol;
	t->l4off = IP_OFF + ip->ihl * 4;
	t->sport = 0;
	t->dport = 0;
	t->tcp_flags = 0;
	t->icmp_type = 0;
	t->icmp_code = 0;
	t->icmp_id = 0;
	t->no_ports = 1;
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;
	if (t->proto == IPPROTO_TCP || t->proto == IPPROTO_UDP || t->proto == IPPROTO_SCTP) {
		if (bpf_skb_load_bytes(skb, t->l4off, ports, sizeof(ports)) < 0)
			return 0;
		t->sport = ports[0];
		t->dport = ports[1];
	}
	if (t->proto == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, t->l4off + 13, &t->tcp_flags, 1) < 0)
		return 0;
	if (t->proto == IPPROTO_ICMP) {
		__u8 tc[2];

		if (bpf_skb_load_bytes(skb, t->l4off, tc, 2) < 0)
			return 0;
		t->icmp_type = tc[0];
		t->icmp_code = tc[1];
		if ((t->icmp_type == 0 || t->icmp_type == 8) &&
		    bpf_skb_load_bytes(skb, t->l4off + 4, &t->icmp_id, 2) < 0)
			return 0;
	}
	t->no_ports = 0;
	return 0;
}

/* The TCP/UDP tuple the service part acts on; returns 0 when the packet is one (later
 * fragments carry no ports and are left to the stack). */
static __always_inline int parse(struct __sk_buff *skb, struct tuple *t)
{
	if (parse_any(skb, t) < 0 || t->no_ports)
		return -1;
	if (t->proto != IPPROTO_TCP && t->proto != IPPROTO_UDP)
		return -1;
	return 0;
}

/* The tuple NAT acts on: TCP, UDP, and ICMP echo and echo reply, whose identifier stands in
 * for the request's source port and the reply's destination port (as Cilium NATs them), so
 * that a pod's ping leaves masqueraded and its answer finds its way back. */
static __always_inline int parse_nat(struct __sk_buff *skb, struct tuple *t)
{
	if (parse_any(skb, t) < 0 || t->no_ports)
		return -1;
	if (t->proto == IPPROTO_ICMP && t->icmp_type == 8) {
		t->sport = t->icmp_id;
		return 0;
	}
	if (t->proto == IPPROTO_ICMP && t->icmp_type == 0) {
		t->dport = t->icmp_id;
		return 0;
	}
	if (t->proto != IPPROTO_TCP && t->proto != IPPROTO_UDP)
		return -1;
	return 0;
}

static __always_inline int is_syn(const struct tuple *t)
{
	return t->proto == IPPROTO_TCP && (t->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* Rewrites addresses and ports to `to`, fixing the IP and L4 checksums incrementally. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct tuple *t,
				   const struct nat4_entry *to)
{
	__u32 csum_off = t->l4off + (t->proto == IPPROTO_TCP ? 16 : 6);

	if (t->proto == IPPROTO_ICMP) {
		/* Echo or echo reply: the addresses (ICMP's checksum covers no pseudo-header)
		 * and the identifier, in the port that stands for it. */
		__u16 id = t->icmp_type == 8 ? t->sport : t->dport;
		__u16 new_id = t->icmp_type == 8 ? to->sport : to->dport;

		if (to->saddr != t->saddr &&
		    (bpf_l3_csum_replace(skb, IP_CSUM_OFF, t->saddr, to->saddr, 4) < 0 ||
		     bpf_skb_store_bytes(skb, IP_SRC_OFF, &to->saddr, 4, 0) < 0))
			return -1;
		if (to->daddr != t->daddr &&
		    (bpf_l3_csum_replace(skb, IP_CSUM_OFF, t->daddr, to->daddr, 4) < 0 ||
		     bpf_skb_store_bytes(skb, IP_DST_OFF, &to->daddr, 4, 0) < 0))
			return -1;
		if (new_id != id &&
		    (bpf_l4_csum_replace(skb, t->l4off + 2, id, new_id, 2) < 0 ||
		     bpf_skb_store_bytes(skb, t->l4off + 4, &new_id, 2, 0) < 0))
			return -1;
		return 0;
	}
	__u64 l4flags = t->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (to->saddr != t->saddr) {
		if (bpf_l4_csum_replace(skb, csum_off, t->saddr, to->saddr,
					BPF_F_PSEUDO_HDR | l4flags | 4) < 0 ||
		    bpf_l3_csum_replace(skb, IP_CSUM_OFF, t->saddr, to->saddr, 4) < 0 ||
		    bpf_skb_store_bytes(skb, IP_SRC_OFF, &to->saddr, 4, 0) < 0)
			return -1;
	}
	if (to->daddr != t->daddr) {
		if (bpf_l4_csum_replace(skb, csum_off, t->daddr, to->daddr,
					BPF_F_PSEUDO_HDR | l4flags | 4) < 0 ||
		    bpf_l3_csum_replace(skb, IP_CSUM_OFF, t->daddr, to->daddr, 4) < 0 ||
		    bpf_skb_store_bytes(skb, IP_DST_OFF, &to->daddr, 4, 0) < 0)
			return -1;
	}
	if (to->sport != t->sport) {
		if (bpf_l4_csum_replace(skb, csum_off, t->sport, to->sport, l4flags | 2) < 0 ||
		    bpf_skb_store_bytes(skb, t->l4off, &to->sport, 2, 0) < 0)
			return -1;
	}
	if (to->dport != t->dport) {
		if (bpf_l4_csum_replace(skb, csum_off, t->dport, to->dport, l4flags | 2) < 0 ||
		    bpf_skb_store_bytes(skb, t->l4off + 2, &to->dport, 2, 0) < 0)
			return -1;
	}
	return 0;
}

static __always_inline void key_of(struct nat4_key *k, const struct tuple *t, __u8 dir)
{
	k->saddr = t->saddr;
	k->daddr = t->daddr;
	k->sport = t->sport;
	k->dport = t->dport;
	k->proto = t->proto;
	k->dir = dir;
	k->pad = 0;
}

/* Applies an existing entry of direction `dir`. Returns the entry's flags + 1 when it did, 0
 * when there is none (or, for a fresh SYN, none whose backend still exists), or when the entry
 * has one of `skip` flags (it belongs to another hook). */
static __always_inline int nat_apply_tunnel(struct __sk_buff *skb, const struct tuple *t, __u8 dir,
					    __u32 skip, __u32 *tunnel)
{
	struct nat4_key k;
	struct nat4_entry *e;

	key_of(&k, t, dir);
	e = bpf_map_lookup_elem(&nat4, &k);
	if (!e || (e->flags & skip))
		return 0;
	/* A SYN-ACK answers a new connection: it belongs to this entry only if that connection's
	 * SYN went through the forward entry just now. Otherwise the entry is left over from an
	 * earlier connection on the same ports (closed, its client port reused by a connection
	 * that is not translated at all) and is dropped, not applied. */
	if (dir == NAT_DIR_REPLY && t->proto == IPPROTO_TCP &&
	    (t->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK)) {
		struct nat4_key fk = { .saddr = e->daddr, .daddr = e->saddr, .sport = e->dport,
				       .dport = e->sport, .proto = t->proto, .dir = NAT_DIR_FWD };
		struct nat4_entry *f = bpf_map_lookup_elem(&nat4, &fk);
		if (!f || bpf_ktime_get_ns() - f->last_seen_ns > SYN_ACK_WINDOW_NS) {
			bpf_map_delete_elem(&nat4, &k);
			return 0;
		}
	}
	/* A SYN opens a new connection: it is balanced afresh and gets both entries again (the
	 * reply entry of an earlier connection on the same ports may be gone). */
	if (dir == NAT_DIR_FWD && is_syn(t))
		return 0;
	/* A forward entry's time is its connection's SYN (set when it is made; what a SYN-ACK is
	 * checked against); a reply entry's is its last packet. */
	if (dir == NAT_DIR_REPLY)
		e->last_seen_ns = bpf_ktime_get_ns();
	if (tunnel)
		*tunnel = e->tunnel;
	if (rewrite(skb, t, e) < 0)
		return -1;
	count(STAT_NAT_HIT);
	return (int)e->flags + 1;
}

static __always_inline int nat_apply(struct __sk_buff *skb, const struct tuple *t, __u8 dir,
				     __u32 skip)
{
	return nat_apply_tunnel(skb, t, dir, skip, 0);
}

static __always_inline __u32 hash_tuple(const struct tuple *t)
{
	/* A 32-bit mix over the 5-tuple; only needs to spread flows over the Maglev table. */
	__u32 h = t->saddr * 0x9e3779b1u;
	h ^= t->daddr + 0x7f4a7c15u + (h << 6) + (h >> 2);
	h ^= (((__u32)t->sport << 16) | t->dport) + 0x85ebca6bu + (h << 6) + (h >> 2);
	h ^= t->proto;
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

/* Picks a backend for a new connection to the frontend `key` (slot 0 entry `svc`). */
static __always_inline struct lb4_backend *select_backend(const struct tuple *t,
							   struct lb4_key *key,
							   const struct lb4_service *svc, int external,
							   __u32 *backend_id)
{
	struct lb4_backend *b;
	__u64 now = bpf_ktime_get_ns();
	struct affinity4_key ak = { .client = t->saddr, .frontend_id = svc->id };
	__u32 id = 0;

	if (svc->flags & SVC_F_AFFINITY) {
		struct affinity4_value *av = bpf_map_lookup_elem(&affinity4, &ak);
		if (av && now - av->last_seen_ns < (__u64)svc->affinity_timeout_s * 1000000000ull &&
		    bpf_map_lookup_elem(&lb4_backends, &av->backend_id))
			id = av->backend_id;
	}
	if (!id && external && (svc->flags & SVC_F_EXTERNAL)) {
		struct node_config *cfg = config();
		if (cfg && cfg->maglev_m) {
			__u32 slot = hash_tuple(t) % cfg->maglev_m;
			struct lb4_maglev_key mk = { .frontend_id = svc->id,
						     .chunk = slot / LB4_MAGLEV_CHUNK };
			struct lb4_maglev_chunk *c = bpf_map_lookup_elem(&lb4_maglev, &mk);
			if (c)
				id = c->backend_id[slot & (LB4_MAGLEV_CHUNK - 1)];
		}
	}
	if (!id) {
		struct lb4_service *slot;
		key->slot = (bpf_get_prandom_u32() % svc->count) + 1;
		slot = bpf_map_lookup_elem(&lb4_services, key);
		key->slot = 0;
		if (!slot)
			return 0;
		id = slot->id;
	}
	b = bpf_map_lookup_elem(&lb4_backends, &id);
	if (!b)
		return 0;
	if (svc->flags & SVC_F_AFFINITY) {
		struct affinity4_value av = { .backend_id = id, .last_seen_ns = now };
		bpf_map_update_elem(&affinity4, &ak, &av, BPF_ANY);
	}
	*backend_id = id;
	return b;
}

/* Installs the forward and reply entries of a new connection and rewrites this packet.
 * `snat` (non-zero: the node address) also rewrites the source, probing for a free port. */
static __always_inline int nat_new(struct __sk_buff *skb, const struct tuple *t,
				   const struct lb4_backend *b, __u32 backend_id, __u32 snat,
				   __u32 flags)
{
	struct nat4_key fk, rk;
	struct nat4_entry fwd = {}, rev = {};
	__u64 now = bpf_ktime_get_ns();
	__u16 port = t->sport;
	int i;

	fwd.saddr = snat ? snat : t->saddr;
	fwd.daddr = b->addr;
	fwd.dport = b->port;
	fwd.backend_id = backend_id;
	fwd.flags = flags;
	fwd.last_seen_ns = now;

	rk.saddr = b->addr;
	rk.daddr = fwd.saddr;
	rk.sport = b->port;
	rk.proto = t->proto;
	rk.dir = NAT_DIR_REPLY;
	rk.pad = 0;
	rev.saddr = t->daddr;
	rev.daddr = t->saddr;
	rev.sport = t->dport;
	rev.dport = t->sport;
	rev.backend_id = backend_id;
	rev.flags = flags;
	rev.last_seen_ns = now;

	for (i = 0; i < NAT_PORT_TRIES; i++) {
		struct nat4_entry *other;
		rk.dport = port;
		other = bpf_map_lookup_elem(&nat4, &rk);
		/* Free, or taken by this very connection (a retransmitted SYN). */
		if (!other || (other->daddr == t->saddr && other->dport == t->sport))
			break;
		if (!snat) {
			i = NAT_PORT_TRIES;
			break;
		}
		port = bpf_htons(bpf_ntohs(port) + 1 + (bpf_get_prandom_u32() & 0x3ff));
		if (bpf_ntohs(port) < 1024)
			port = bpf_htons(bpf_ntohs(port) + 1024);
	}
	if (i == NAT_PORT_TRIES) {
		count(STAT_NAT_FULL);
		return -1;
	}
	fwd.sport = port;
	key_of(&fk, t, NAT_DIR_FWD);
	if (bpf_map_update_elem(&nat4, &rk, &rev, BPF_ANY) < 0 ||
	    bpf_map_update_elem(&nat4, &fk, &fwd, BPF_ANY) < 0) {
		count(STAT_NAT_FULL);
		return -1;
	}
	return rewrite(skb, t, &fwd);
}

/* The frontend a packet is addressed to, or 0. */
static __always_inline struct lb4_service *frontend(const struct tuple *t, struct lb4_key *key)
{
	struct lb4_service *svc;

	key->addr = t->daddr;
	key->port = t->dport;
	key->proto = t->proto;
	key->pad = 0;
	key->slot = 0;
	key->pad2 = 0;
	svc = bpf_map_lookup_elem(&lb4_services, key);
	if (svc && svc->count == 0)
		return 0;
	return svc;
}

static __always_inline int redirect_out(struct __sk_buff *skb)
{
	/* The source is one of ours (SNAT) or the packet turns around on the same device: send it
	 * through the FIB and the neighbour table directly, bypassing the input path (which would
	 * drop a packet arriving with a local source address). */
	return bpf_redirect_neigh(skb->ifindex, 0, 0, 0);
}

/* DSR: wraps the packet, unchanged, in an outer IPv4 header to the backend's node and sends
 * it there; that node unwraps it and delivers it to the backend, whose replies leave that node
 * with the service address as source, straight to the client. */
static __always_inline int dsr_encap(struct __sk_buff *skb, __u32 node_ip, __u32 tunnel)
{
	struct iphdr outer = {};
	__u16 inner_len;
	__u64 csum;

	if (bpf_skb_load_bytes(skb, IP_OFF + 2, &inner_len, 2) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_adjust_room(skb, sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4) < 0)
		return TC_ACT_SHOT;
	outer.version = 4;
	outer.ihl = 5;
	outer.ttl = 64;
	outer.protocol = IPPROTO_IPIP;
	outer.tot_len = bpf_htons(bpf_ntohs(inner_len) + sizeof(struct iphdr));
	outer.saddr = node_ip;
	outer.daddr = tunnel;
	csum = bpf_csum_diff(0, 0, (__be32 *)&outer, sizeof(outer), 0);
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	outer.check = ~csum;
	if (bpf_skb_store_bytes(skb, IP_OFF, &outer, sizeof(outer), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect_neigh(skb->ifindex, 0, 0, 0);
}

/* Unwraps an IP-in-IP packet addressed to this node: 1 when it did. */
static __always_inline int dsr_decap(struct __sk_buff *skb, __u32 node_ip)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + IP_OFF;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	if (ip->protocol != IPPROTO_IPIP || ip->daddr != node_ip || ip->ihl != 5)
		return 0;
	if (bpf_skb_adjust_room(skb, -(__s32)sizeof(struct iphdr), BPF_ADJ_ROOM_MAC, 0) < 0)
		return -1;
	return 1;
}

/* Sends a packet that came from a pod straight back into it: swap the Ethernet addresses (it
 * was addressed to the node's end of the veth) and redirect to the veth's egress. */
static __always_inline int turn_around(struct __sk_buff *skb)
{
	__u8 macs[12], swapped[12];
	int i;

	if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)) < 0)
		return TC_ACT_SHOT;
	for (i = 0; i < 6; i++) {
		swapped[i] = macs[i + 6];
		swapped[i + 6] = macs[i];
	}
	if (bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

static __always_inline int lb_from_pod(struct __sk_buff *skb)
{
	struct tuple t;
	struct lb4_key key;
	struct lb4_service *svc;
	struct lb4_backend *b;
	__u32 backend_id = 0;
	int r;

	count(STAT_PACKETS);
	if (parse(skb, &t) < 0)
		return TC_ACT_OK;
	/* The reply of a pod that reached itself through a service: translate it back and hand
	 * it straight back to the pod. */
	if (t.daddr == bpf_htonl(HAIRPIN_IP4)) {
		r = nat_apply(skb, &t, NAT_DIR_REPLY, 0);
		if (r < 0)
			return TC_ACT_SHOT;
		return r > 0 ? turn_around(skb) : TC_ACT_OK;
	}
	/* Masquerade entries are applied where the packet leaves the node (to_netdev): applied
	 * here, the node's own address as source would make the packet a martian. */
	r = nat_apply(skb, &t, NAT_DIR_FWD, NAT_F_MASQ);
	if (r < 0)
		return TC_ACT_SHOT;
	if (r > 0)
		return TC_ACT_OK;
	svc = frontend(&t, &key);
	if (!svc)
		return TC_ACT_OK;
	b = select_backend(&t, &key, svc, 0, &backend_id);
	if (!b) {
		count(STAT_NO_BACKEND);
		emit(skb, &t, EVENT_DROP, POINT_FROM_POD, DROP_NO_SERVICE, 0, 0);
		return TC_ACT_OK;
	}
	count(STAT_SERVICE_NEW);
	if (nat_new(skb, &t, b, backend_id, b->addr == t.saddr ? bpf_htonl(HAIRPIN_IP4) : 0,
		    b->addr == t.saddr ? NAT_F_SNAT : 0) < 0) {
		emit(skb, &t, EVENT_DROP, POINT_FROM_POD, DROP_NAT_FAILED, 0, 0);
		return TC_ACT_SHOT;
	}
	emit(skb, &t, EVENT_TRACE, POINT_FROM_POD, 0, b->addr, b->port);
	return TC_ACT_OK;
}

static __always_inline int lb_to_pod(struct __sk_buff *skb)
{
	struct tuple t;
	struct node_config *cfg;
	int r;

	count(STAT_PACKETS);
	if (parse(skb, &t) < 0)
		return TC_ACT_OK;
	r = nat_apply(skb, &t, NAT_DIR_REPLY, 0);
	if (r < 0)
		return TC_ACT_SHOT;
	if (r > 0)
		return TC_ACT_OK;
	/* A connection from outside the cluster to this pod: remember it so the pod's replies
	 * leave unmasqueraded. */
	cfg = config();
	if (cfg && (t.saddr & cfg->cluster_cidr_mask) != cfg->cluster_cidr_addr) {
		struct inbound4_key ik = { .pod = t.daddr, .remote = t.saddr, .pod_port = t.dport,
					   .remote_port = t.sport, .proto = t.proto };
		__u64 now = bpf_ktime_get_ns();
		bpf_map_update_elem(&inbound4, &ik, &now, BPF_ANY);
	}
	return TC_ACT_OK;
}

static __always_inline __u32 ipcache_identity(__u32 addr)
{
	struct ipcache4_key k = { .prefixlen = 32, .addr = addr };
	struct ipcache4_value *v = bpf_map_lookup_elem(&ipcache4, &k);

	return v ? v->identity : ID_WORLD;
}

static __always_inline struct policy_value *policy_lookup(__u32 ep, __u32 identity, __u8 dir,
							   const struct tuple *t)
{
	/* ICMP carries no ports: its type stands in the port's place (as Cilium keys it), and
	 * the tuple keeps 0 so that conntrack pairs requests with their replies. */
	__u16 dport = t->proto == IPPROTO_ICMP ? bpf_htons(t->icmp_type) : t->dport;
	struct policy_key k = { .prefixlen = POLICY_KEY_FULL_BITS, .ep = ep, .identity = identity,
				.dir = dir, .proto = t->proto, .dport = dport };

	return bpf_map_lookup_elem(&policy4, &k);
}

/* Hubble's match type of a policy entry: `exact` when it names the peer's identity (not the
 * wildcard). */
static __always_inline __u16 match_of(const struct policy_value *v, int exact)
{
	if (v->flags & POLICY_F_PORT)
		return exact ? POLICY_MATCH_L3_L4 : POLICY_MATCH_L4_ONLY;
	if (v->flags & POLICY_F_PROTO)
		return exact ? POLICY_MATCH_L3_PROTO : POLICY_MATCH_PROTO_ONLY;
	return exact ? POLICY_MATCH_L3_ONLY : POLICY_MATCH_ALL;
}

/* 0 when the endpoint `ep` may exchange this packet with a peer of `identity`; otherwise -1.
 * Either way the rule that decided (RULE_DEFAULT_DENY when none allowed it) and the kind of
 * entry that did go to `rule` and `match`. At most two lookups. */
static __always_inline int policy_verdict(__u32 ep, __u32 identity, __u8 dir, const struct tuple *t,
					  __u32 *rule, __u16 *match)
{
	struct policy_value *exact = policy_lookup(ep, identity, dir, t);
	struct policy_value *any = policy_lookup(ep, ID_ANY, dir, t);

	if (exact && (exact->flags & POLICY_F_DENY)) {
		*rule = exact->rule;
		*match = match_of(exact, 1);
		return -1;
	}
	if (any && (any->flags & POLICY_F_DENY)) {
		*rule = any->rule;
		*match = match_of(any, 0);
		return -1;
	}
	/* The more specific entry names the allow (the peer's own before the wildcard). */
	if (exact) {
		*rule = exact->rule;
		*match = match_of(exact, 1);
		return 0;
	}
	if (any) {
		*rule = any->rule;
		*match = match_of(any, 0);
		return 0;
	}
	*rule = RULE_DEFAULT_DENY;
	*match = POLICY_MATCH_NONE;
	return -1;
}

static __always_inline __u64 ct_lifetime(__u8 proto)
{
	return proto == IPPROTO_TCP ? POLICY_CT_TCP_NS : POLICY_CT_OTHER_NS;
}

/* A port of the tuple as conntrack keys it: ICMP has none, so an echo and its reply are
 * paired by their identifier (both ways), and two pings crossing between the same two
 * endpoints are not taken for each other's replies. */
static __always_inline __u16 ct_port(const struct tuple *t, __u16 port)
{
	return t->proto == IPPROTO_ICMP ? t->icmp_id : port;
}

/* Whether the packet answers a connection this node let through in direction `dir` (seen
 * the other way round). A SYN opens a connection: never a reply. */
static __always_inline int ct_is_reply(const struct tuple *t, __u8 dir, __u64 now)
{
	struct nat4_key k = { .saddr = t->daddr, .daddr = t->saddr, .sport = ct_port(t, t->dport),
			      .dport = ct_port(t, t->sport), .proto = t->proto, .dir = dir };
	__u64 *seen;

	if (is_syn(t))
		return 0;
	seen = bpf_map_lookup_elem(&policy_ct4, &k);
	if (!seen || now - *seen > ct_lifetime(t->proto))
		return 0;
	if (now - *seen > POLICY_CT_REFRESH_NS)
		*seen = now;
	return 1;
}

/* Records the connection of this packet; returns 1 when it is new (no live entry before). */
static __always_inline int ct_record(const struct tuple *t, __u8 dir, __u64 now)
{
	struct nat4_key k = { .saddr = t->saddr, .daddr = t->daddr, .sport = ct_port(t, t->sport),
			      .dport = ct_port(t, t->dport), .proto = t->proto, .dir = dir };
	__u64 *seen = bpf_map_lookup_elem(&policy_ct4, &k);

	if (seen && now - *seen <= ct_lifetime(t->proto)) {
		if (now - *seen > POLICY_CT_REFRESH_NS)
			*seen = now;
		return 0;
	}
	if (bpf_map_update_elem(&policy_ct4, &k, &now, BPF_ANY) < 0)
		count(STAT_POLICY_CT_FULL);
	return 1;
}

/* Policy for a packet at a local endpoint's veth: `dir` is the endpoint's direction, `ep` its
 * address in the packet, `peer` the other side's. A new connection let through an enforced
 * direction is a policy verdict event (one per connection, not per packet). */
static __always_inline int policy(struct __sk_buff *skb, __u8 dir)
{
	struct tuple t;
	struct endpoint4 *ep;
	__u32 ep_addr, peer, identity = 0, rule = 0;
	__u16 match = POLICY_MATCH_NONE;
	__u8 point = dir == POLICY_DIR_EGRESS ? POINT_FROM_POD : POINT_TO_POD;
	int enforced;
	__u64 now;

	if (parse_any(skb, &t) < 0)
		return TC_ACT_OK;
	ep_addr = dir == POLICY_DIR_EGRESS ? t.saddr : t.daddr;
	peer = dir == POLICY_DIR_EGRESS ? t.daddr : t.saddr;
	ep = bpf_map_lookup_elem(&endpoints4, &ep_addr);
	if (!ep)
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();
	/* The answer of a connection let through the other way: allowed, and not recorded as a
	 * connection of this direction (its reverse would then pass the other way as a reply).
	 * This lookup is needed even where this direction is not enforced. */
	if (ct_is_reply(&t, dir == POLICY_DIR_EGRESS ? POLICY_DIR_INGRESS : POLICY_DIR_EGRESS, now))
		return TC_ACT_OK;
	enforced = ep->flags & (dir == POLICY_DIR_EGRESS ? EP_F_EGRESS : EP_F_INGRESS);
	if (enforced) {
		identity = ipcache_identity(peer);
		if (policy_verdict(ep_addr, identity, dir, &t, &rule, &match) < 0) {
			count(STAT_POLICY_DROP);
			emit_full(skb, &t, EVENT_DROP, point, DROP_POLICY, 0, 0, rule, identity, match);
			return TC_ACT_SHOT;
		}
	}
	if (ct_record(&t, dir, now) && enforced) {
		count(STAT_POLICY_VERDICT);
		emit_full(skb, &t, EVENT_POLICY_VERDICT, point, 0, 0, 0, rule, identity, match);
	}
	return TC_ACT_OK;
}

/* What a pod sends that its veth must not pass: IPv6 and other non-IPv4 protocols except ARP
 * (this datapath enforces policy on IPv4 only, so IPv6 would pass unchecked; Cilium without
 * IPv6 drops it too), and IPv4 from a source address that is not the pod's (spoofing would
 * take another endpoint's identity). 0 to go on, else the drop reason. */
static __always_inline __u32 pod_sends(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + IP_OFF;
	__u32 ifindex = skb->ifindex;
	__u32 *own;

	if ((void *)(eth + 1) > data_end)
		return DROP_UNSUPPORTED_L3;
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return 0;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return DROP_UNSUPPORTED_L3;
	if ((void *)(ip + 1) > data_end)
		return 0;
	own = bpf_map_lookup_elem(&pod_veth4, &ifindex);
	if (own && ip->saddr != *own)
		return DROP_INVALID_SIP;
	return 0;
}

/* The same at the other end: nothing but IPv4 and ARP reaches a pod. */
static __always_inline int l3_supported(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 0;
	return eth->h_proto == bpf_htons(ETH_P_IP) || eth->h_proto == bpf_htons(ETH_P_ARP);
}

/* Counts a packet dropped before policy. A spoofed one is a flow (its IPv4 addresses); one of
 * another protocol is counted only (an IPv4 event cannot carry its addresses, and a pod's
 * IPv6 neighbour discovery would make flows of every pod start). */
static __always_inline int drop_early(struct __sk_buff *skb, __u8 point, __u32 reason)
{
	struct tuple t = {};

	if (reason != DROP_INVALID_SIP) {
		count(STAT_UNSUPPORTED_L3);
		return TC_ACT_SHOT;
	}
	count(STAT_SPOOFED);
	if (parse_any(skb, &t) == 0)
		emit(skb, &t, EVENT_DROP, point, reason, 0, 0);
	return TC_ACT_SHOT;
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	__u32 bad = pod_sends(skb);
	int act;

	if (bad)
		return drop_early(skb, POINT_FROM_POD, bad);
	act = lb_from_pod(skb);

	/* Redirected (a hairpin turned around) or dropped: policy has nothing to add. */
	if (act != TC_ACT_OK)
		return act;
	return policy(skb, POLICY_DIR_EGRESS);
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	int act;

	if (!l3_supported(skb))
		return drop_early(skb, POINT_TO_POD, DROP_UNSUPPORTED_L3);
	act = policy(skb, POLICY_DIR_INGRESS);

	if (act != TC_ACT_OK)
		return act;
	return lb_to_pod(skb);
}

SEC("classifier")
int from_netdev(struct __sk_buff *skb)
{
	struct tuple t;
	struct lb4_key key;
	struct lb4_service *svc;
	struct lb4_backend *b;
	struct node_config *cfg;
	__u32 backend_id = 0, tunnel = 0;
	int r, decapped;

	count(STAT_PACKETS);
	cfg = config();
	if (!cfg)
		return TC_ACT_OK;
	/* A DSR packet from the node that received it: unwrap, then treat the inner packet as if
	 * it had arrived here (it is for a local backend). */
	decapped = dsr_decap(skb, cfg->node_ip);
	if (decapped < 0)
		return TC_ACT_SHOT;
	if (parse_nat(skb, &t) < 0)
		return TC_ACT_OK;
	r = nat_apply(skb, &t, NAT_DIR_REPLY, 0);
	/* ICMP: only the answer to a masqueraded ping is for this program. */
	if (t.proto == IPPROTO_ICMP)
		return r < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	if (r == 0)
		r = nat_apply_tunnel(skb, &t, NAT_DIR_FWD, 0, &tunnel);
	if (r < 0)
		return TC_ACT_SHOT;
	if (r > 0) {
		if ((r - 1) & NAT_F_DSR)
			return dsr_encap(skb, cfg->node_ip, tunnel);
		return ((r - 1) & NAT_F_REDIRECT) ? redirect_out(skb) : TC_ACT_OK;
	}
	svc = frontend(&t, &key);
	if (!svc)
		return TC_ACT_OK;
	b = select_backend(&t, &key, svc, 1, &backend_id);
	if (!b) {
		count(STAT_NO_BACKEND);
		emit(skb, &t, EVENT_DROP, POINT_FROM_NETDEV, DROP_NO_SERVICE, 0, 0);
		return TC_ACT_OK;
	}
	count(STAT_SERVICE_NEW);
	if (!decapped)
		emit(skb, &t, EVENT_TRACE, POINT_FROM_NETDEV, 0, b->addr, b->port);
	if (b->flags & BACKEND_F_LOCAL) {
		if (nat_new(skb, &t, b, backend_id, 0, 0) < 0) {
			emit(skb, &t, EVENT_DROP, POINT_FROM_NETDEV, DROP_NAT_FAILED, 0, 0);
			return TC_ACT_SHOT;
		}
		return TC_ACT_OK;
	}
	/* Unwrapped here but the backend is elsewhere (tables differ for a moment): never bounce
	 * a DSR packet on. */
	if (decapped || !cfg->node_ip) {
		emit(skb, &t, EVENT_DROP, POINT_FROM_NETDEV, DROP_DSR_LOOP, 0, 0);
		return TC_ACT_SHOT;
	}
	if ((cfg->flags & NODE_F_DSR) && b->node_ip &&
	    (t.proto == IPPROTO_TCP || !(cfg->flags & NODE_F_DSR_TCP_ONLY))) {
		/* Remember the backend's node for the connection's later packets; the packet
		 * itself is not rewritten here. */
		struct nat4_key fk;
		struct nat4_entry fwd = { .saddr = t.saddr, .daddr = t.daddr, .sport = t.sport,
					  .dport = t.dport, .backend_id = backend_id,
					  .flags = NAT_F_DSR, .tunnel = b->node_ip,
					  .last_seen_ns = bpf_ktime_get_ns() };
		key_of(&fk, &t, NAT_DIR_FWD);
		if (bpf_map_update_elem(&nat4, &fk, &fwd, BPF_ANY) < 0) {
			count(STAT_NAT_FULL);
			return TC_ACT_SHOT;
		}
		return dsr_encap(skb, cfg->node_ip, b->node_ip);
	}
	if (nat_new(skb, &t, b, backend_id, cfg->node_ip, NAT_F_SNAT | NAT_F_REDIRECT) < 0)
		return TC_ACT_SHOT;
	return redirect_out(skb);
}

SEC("classifier")
int to_netdev(struct __sk_buff *skb)
{
	struct tuple t;
	struct node_config *cfg;
	int r;

	count(STAT_PACKETS);
	if (parse_nat(skb, &t) < 0)
		return TC_ACT_OK;
	r = nat_apply(skb, &t, NAT_DIR_REPLY, 0);
	if (r == 0)
		r = nat_apply(skb, &t, NAT_DIR_FWD, 0);
	if (r < 0)
		return TC_ACT_SHOT;
	if (r > 0)
		return TC_ACT_OK;
	/* Masquerade: a pod's new connection to outside the native routing CIDR leaves with the
	 * node's address. Replies of connections opened from outside are left alone. */
	cfg = config();
	if (!cfg || !(cfg->flags & NODE_F_MASQUERADE) || !cfg->node_ip)
		return TC_ACT_OK;
	if ((t.saddr & cfg->cluster_cidr_mask) != cfg->cluster_cidr_addr ||
	    (t.daddr & cfg->cluster_cidr_mask) == cfg->cluster_cidr_addr)
		return TC_ACT_OK;
	if (t.proto == IPPROTO_TCP && !is_syn(&t))
		return TC_ACT_OK;
	/* A pod's answer to a ping from outside is not a new connection of its own. */
	if (t.proto == IPPROTO_ICMP && t.icmp_type != 8)
		return TC_ACT_OK;
	{
		struct inbound4_key ik = { .pod = t.saddr, .remote = t.daddr, .pod_port = t.sport,
					   .remote_port = t.dport, .proto = t.proto };
		if (bpf_map_lookup_elem(&inbound4, &ik))
			return TC_ACT_OK;
	}
	{
		struct lb4_backend remote = { .addr = t.daddr, .port = t.dport, .proto = t.proto };
		count(STAT_MASQ_NEW);
		if (nat_new(skb, &t, &remote, 0, cfg->node_ip, NAT_F_SNAT | NAT_F_MASQ) < 0) {
			emit(skb, &t, EVENT_DROP, POINT_TO_NETDEV, DROP_NAT_FAILED, 0, 0);
			return TC_ACT_SHOT;
		}
		emit(skb, &t, EVENT_TRACE, POINT_TO_NETDEV, 0, 0, 0);
	}
	return TC_ACT_OK;
}
