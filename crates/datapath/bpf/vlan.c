/* 802.1Q tagging on a trunk, as tc programs, for kernels without VLAN devices.
 *
 *   vlan_tag         ingress of an access port: the frame gets the port's VLAN tag, then goes
 *                    on into the bridge or is redirected (to the node's trunk)
 *   vlan_access_out  egress of an access port: a frame of the port's VLAN leaves untagged,
 *                    every other frame is dropped
 *   vlan_trunk_in    ingress of a node's trunk: the tag picks the VLAN's parent, the frame
 *                    leaves untagged there; an untagged frame, an 802.1ad tag or an unknown
 *                    VLAN is dropped
 *
 * An access port drops frames that come in tagged (priority-tagged ones, VID 0, included):
 * nothing on an access port may choose its VLAN.
 *
 * The tag travels as the skb's VLAN metadata (bpf_skb_vlan_push), which every capture shows
 * as an 802.1Q header and a bridge without VLAN filtering forwards as it is.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

/* An access port (by ifindex): its VLAN, and where its tagged frames go (0: on as they are). */
struct vlan_access {
	__u32 vid;
	__u32 redirect_ifindex;
};

/* A trunk's VLAN: the trunk's ifindex and the VLAN id. */
struct vlan_trunk_key {
	__u32 ifindex;
	__u32 vid;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct vlan_access);
} vlan_access SEC(".maps");

/* A trunk's VLAN to the ifindex its untagged frames are redirected to. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct vlan_trunk_key);
	__type(value, __u32);
} vlan_trunk SEC(".maps");

#define VLAN_VID_MASK 0x0fff

SEC("classifier")
int vlan_tag(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct vlan_access *port = bpf_map_lookup_elem(&vlan_access, &ifindex);

	/* An access port takes untagged frames only. */
	if (!port || skb->vlan_present)
		return TC_ACT_SHOT;
	if (bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), port->vid & VLAN_VID_MASK))
		return TC_ACT_SHOT;
	if (port->redirect_ifindex)
		return bpf_redirect(port->redirect_ifindex, 0);
	return TC_ACT_OK;
}

SEC("classifier")
int vlan_access_out(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct vlan_access *port = bpf_map_lookup_elem(&vlan_access, &ifindex);

	if (!port || !skb->vlan_present || skb->vlan_proto != bpf_htons(ETH_P_8021Q) ||
	    (skb->vlan_tci & VLAN_VID_MASK) != port->vid)
		return TC_ACT_SHOT;
	if (bpf_skb_vlan_pop(skb))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

SEC("classifier")
int vlan_trunk_in(struct __sk_buff *skb)
{
	struct vlan_trunk_key key = {
		.ifindex = skb->ifindex,
		.vid = skb->vlan_tci & VLAN_VID_MASK,
	};
	__u32 *to;

	/* 802.1Q only: an 802.1ad (QinQ) outer tag is not this trunk's. */
	if (!skb->vlan_present || skb->vlan_proto != bpf_htons(ETH_P_8021Q))
		return TC_ACT_SHOT;
	to = bpf_map_lookup_elem(&vlan_trunk, &key);
	if (!to)
		return TC_ACT_SHOT;
	if (bpf_skb_vlan_pop(skb))
		return TC_ACT_SHOT;
	return bpf_redirect(*to, 0);
}
