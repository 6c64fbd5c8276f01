// SPDX-License-Identifier: GPL-2.0
/* DLBA scheduler data plane: a tc (clsact ingress, direct-action) program on the front interface.
 *
 * Patent 003, Fig. 4: the scheduler is a router. For IPv4 to the VIP it hashes
 * (client IPv4 as host-order u32 + client port) % buckets into the client table, rewrites the
 * destination MAC to the owner's (Fig. 5 gives the MAC) and sends the frame back out of the same
 * interface, unchanged otherwise. Frames it owns itself go up its own stack. Responses never come
 * back through here: every node has the VIP on lo and answers the client directly.
 *
 * VIPs (seed 002): the cluster's VIP (one compare, so a single-VIP array pays no lookup) and
 * every other address of every service (dlba_vips, a hash of /32s: prefixes up to /24 are
 * expanded by the control plane, so the cost is one lookup whatever the number of VIPs). A VIP
 * whose services name ports answers only those (dlba_vip_ports, one more lookup); a VIP of the
 * implicit service (no [[services]]) takes every port, as before. The port rules, the deny list
 * and the client table are the same for every VIP.
 *
 * Decision order (mirrored by scheduler/frame_decision.py, which the AF_PACKET fallback uses):
 *   not IPv4, not to a VIP, not addressed to our MAC    -> pass untouched
 *   source in a deny CIDR                              -> drop (acl)
 *   ICMP dest-unreachable quoting a VIP TCP/UDP packet -> as that flow's client packets (below)
 *   not TCP/UDP (other ICMP, ...)                      -> pass (the scheduler node answers)
 *   fragment (MF set or offset != 0)                   -> owner of bucket (src + 0), no port rule
 *   destination port not named by the VIP's services   -> drop (port)
 *   destination port pinned                            -> that node
 *   destination port balanced                          -> owner of bucket (src + sport)
 *   other port                                         -> default node, or drop (port)
 *   owner == self                                      -> pass; else rewrite MACs + redirect
 *
 * Fragments: non-first fragments carry no ports, so every fragment of a datagram (the first one
 * too) is hashed with port 0. All pieces of one datagram then reach one node, which reassembles
 * it; stateless and without a fragment-tracking map. Port rules cannot apply to pieces without
 * ports; the receiving node's own listeners still decide.
 *
 * ICMP errors (GLB and Katran do the same): a "fragmentation needed" for a response must reach
 * the node that sent the response, or path-MTU discovery never works for clients behind small
 * links. The quoted packet is that node's own (VIP:vport -> client:cport), so the bucket is
 * (client + cport), exactly the bucket of the client's packets, and vport's port rule applies
 * (an error about a port the rules drop is dropped). The deny list applies to the outer source
 * like for any frame: it says who may send to the VIP. A denied client has no flow to be told
 * about (its SYNs never pass), so a second lookup on the quoted address would buy nothing. An
 * error is not traffic from the client: it does not stamp the bucket's last access.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "dlba_tc.h"

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
/* Ethernet + the longest IPv4 header + the 4 port bytes of TCP/UDP. */
#define MAX_HDR (ETH_HLEN + 60 + 4)
#define MIN_HDR (ETH_HLEN + 20 + 4)
#define ICMP_HLEN 8
#define ICMP_DEST_UNREACH 3
/* ... + ICMP header + the quoted packet's longest IPv4 header + its 4 port bytes. */
#define MAX_ICMP_HDR (ETH_HLEN + 60 + ICMP_HLEN + 60 + 4)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dlba_config);
} dlba_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DLBA_MAX_NODES);
	__type(key, __u32);
	__type(value, struct dlba_node);
} dlba_nodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} dlba_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DLBA_MAX_VIPS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u32);
} dlba_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DLBA_MAX_VIP_PORTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dlba_vip_port);
	__type(value, __u8);
} dlba_vip_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dlba_lpm_key);
	__type(value, __u8);
} dlba_deny SEC(".maps");

/* The client table is an inner array (bucket -> node index) held in slot 0 of an array-of-maps.
 * Why not BPF_MAP_UPDATE_BATCH on a plain array: a batch update writes element by element, so a
 * packet can see half the old table and half the new one. Building a complete new inner map and
 * swapping the single outer slot is one pointer store (RCU): every packet sees one whole table,
 * as Cilium does for its maglev tables. The inner template's max_entries is set to the real
 * bucket count by the loader (bpf_map__set_inner_map_fd), so lookups stay inlined. */
struct dlba_table_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct dlba_table_inner);
} dlba_table SEC(".maps");

/* Per-CPU so that the hot path never bounces a shared cache line between cores; the control
 * plane takes the maximum (last access) or the sum (counters) over CPUs. max_entries is set to
 * the bucket count at load time. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dlba_last_access SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dlba_stats);
} dlba_stats SEC(".maps");

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	/* 6 bytes as 4 + 2: two compares instead of six. */
	return *(const __u32 *)a == *(const __u32 *)b &&
	       *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

/* The flags of VIP `addr` (network order), or -1 when it is no VIP of ours. */
static __always_inline long vip_flags(const struct dlba_config *cfg, __u32 addr)
{
	if (addr == cfg->vip)
		return cfg->vip_flags;
	__u32 *flags = bpf_map_lookup_elem(&dlba_vips, &addr);
	return flags ? (long)*flags : -1;
}

/* Does a service name `port` (host order) on VIP `addr`? */
static __always_inline int port_named(long flags, __u32 addr, __u32 port)
{
	if (flags & DLBA_VIP_ANY_PORT)
		return 1;
	struct dlba_vip_port key = {.addr = addr, .port = port};
	return bpf_map_lookup_elem(&dlba_vip_ports, &key) != NULL;
}

static __always_inline int deliver(struct __sk_buff *skb, const struct dlba_config *cfg,
				   struct dlba_stats *st, __u32 node)
{
	if (node >= DLBA_MAX_NODES) { /* DLBA_NO_NODE: a bucket nobody owns */
		st->c[DLBA_C_DROP_NO_NODE]++;
		return TC_ACT_SHOT;
	}
	/* The mask after an opaque barrier keeps the index provably < 64 for the verifier. */
	__u32 idx = node;
	barrier_var(idx);
	idx &= DLBA_MAX_NODES - 1;
	if (node == cfg->self_index) {
		st->c[idx]++;
		st->c[DLBA_C_PASS_SELF]++;
		return TC_ACT_OK;
	}
	struct dlba_node *n = bpf_map_lookup_elem(&dlba_nodes, &node);
	if (!n || !n->valid) {
		/* The table names a node whose MAC we do not know: dropping lets the client
		 * retransmit once the control plane catches up; passing it up would make this
		 * node answer (RST) for a connection that lives elsewhere. */
		st->c[DLBA_C_DROP_NO_NODE]++;
		return TC_ACT_SHOT;
	}
	/* Packet pointers are re-read: the caller may have pulled data. */
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	__builtin_memcpy(eth->h_dest, n->mac, ETH_ALEN);
	/* Source = our own MAC, or the switch would learn the client's MAC on our port. */
	__builtin_memcpy(eth->h_source, cfg->own_mac, ETH_ALEN);
	st->c[idx]++;
	st->c[DLBA_C_REDIRECT]++;
	return bpf_redirect(skb->ifindex, 0);
}

/* The port rule, then the client table for balanced ports: client/cport in host order. */
static __always_inline int route(struct __sk_buff *skb, const struct dlba_config *cfg,
				 struct dlba_stats *st, __u32 rule, __u32 client, __u32 cport,
				 const int stamp)
{
	__u32 node;
	if (rule == DLBA_PORT_BALANCED) {
		__u32 buckets = cfg->buckets;
		if (!buckets)
			return TC_ACT_OK;
		__u32 bucket = ((__u64)client + cport) % buckets;
		__u32 zero = 0;
		void *table = bpf_map_lookup_elem(&dlba_table, &zero);
		if (!table)
			return TC_ACT_OK; /* no table yet: behave like a plain node */
		__u32 *owner = bpf_map_lookup_elem(table, &bucket);
		if (!owner)
			return TC_ACT_OK;
		node = *owner;
		/* The coarse clock (CLOCK_MONOTONIC at tick resolution) costs a fraction of
		 * bpf_ktime_get_ns; idle timeouts are in seconds (patent: "Last Access in Seconds"). */
		if (stamp) {
			__u64 *last = bpf_map_lookup_elem(&dlba_last_access, &bucket);
			if (last)
				*last = bpf_ktime_get_coarse_ns();
		}
	} else if (rule >= DLBA_PORT_PINNED) {
		node = rule - DLBA_PORT_PINNED;
	} else {
		node = cfg->default_node;
		if (node == DLBA_NO_NODE) {
			st->c[DLBA_C_DROP_PORT]++;
			return TC_ACT_SHOT;
		}
	}
	return deliver(skb, cfg, st, node);
}

/* An ICMP error to the VIP (l4off: where its ICMP header starts; not a fragment). Routed like
 * the packets of the flow it quotes, when it quotes one of ours; else the scheduler keeps it. */
static __always_inline int icmp_error(struct __sk_buff *skb, const struct dlba_config *cfg,
				      struct dlba_stats *st, __u32 l4off)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	/* One pull covers every header read below (only when they are not linear already). */
	__u32 want = skb->len < MAX_ICMP_HDR ? skb->len : MAX_ICMP_HDR;
	if (data + want > end) {
		if (bpf_skb_pull_data(skb, want))
			return TC_ACT_OK;
		st->c[DLBA_C_PULLED]++;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}
	if (l4off > ETH_HLEN + 60)
		return TC_ACT_OK; /* for the verifier: ihl <= 15 */
	__u8 *icmp = data + l4off;
	if ((void *)(icmp + ICMP_HLEN) > end || icmp[0] != ICMP_DEST_UNREACH) {
		st->c[DLBA_C_PASS_OTHER]++;
		return TC_ACT_OK;
	}
	struct iphdr *in = (void *)(icmp + ICMP_HLEN);
	if ((void *)(in + 1) > end || in->version != 4 || in->ihl < 5) {
		st->c[DLBA_C_MALFORMED]++;
		return TC_ACT_OK;
	}
	long flags = vip_flags(cfg, in->saddr);
	if (flags < 0 || (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP) ||
	    (in->frag_off & bpf_htons(IP_OFFSET))) {
		st->c[DLBA_C_PASS_OTHER]++; /* not our flow, or no ports to find it by */
		return TC_ACT_OK;
	}
	__be16 *ports = (void *)in + in->ihl * 4;
	if ((void *)(ports + 2) > end) {
		st->c[DLBA_C_MALFORMED]++;
		return TC_ACT_OK;
	}
	__u32 vport = bpf_ntohs(ports[0]);
	__u32 cport = bpf_ntohs(ports[1]);
	__u32 client = bpf_ntohl(in->daddr);
	st->c[DLBA_C_ICMP]++;
	if (!port_named(flags, in->saddr, vport)) {
		st->c[DLBA_C_DROP_PORT]++;
		return TC_ACT_SHOT;
	}
	__u32 *r = bpf_map_lookup_elem(&dlba_ports, &vport);
	return route(skb, cfg, st, r ? *r : DLBA_PORT_DEFAULT, client, cport, 0);
}

SEC("tc")
int dlba_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 zero = 0;

	/* Generators and GRO may leave the IP header outside the linear area: pull only then. */
	int pulled = 0;
	if (data + MIN_HDR > end && skb->len >= ETH_HLEN + 20) {
		if (bpf_skb_pull_data(skb, skb->len < MAX_HDR ? skb->len : MAX_HDR))
			return TC_ACT_OK;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		pulled = 1;
	}
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	struct dlba_config *cfg = bpf_map_lookup_elem(&dlba_config, &zero);
	if (!cfg)
		return TC_ACT_OK;
	__u32 daddr = ip->daddr; /* kept: a pull below invalidates ip */
	long flags = vip_flags(cfg, daddr);
	if (flags < 0 || !mac_eq(eth->h_dest, cfg->own_mac))
		return TC_ACT_OK;
	struct dlba_stats *st = bpf_map_lookup_elem(&dlba_stats, &zero);
	if (!st)
		return TC_ACT_OK;
	st->c[DLBA_C_PULLED] += pulled;
	if (ip->version != 4 || ip->ihl < 5) {
		st->c[DLBA_C_MALFORMED]++;
		return TC_ACT_OK; /* the kernel's own checks drop it */
	}

	__u32 saddr = ip->saddr;
	if (cfg->deny_count) {
		struct dlba_lpm_key key = {.prefixlen = 32, .addr = saddr};
		if (bpf_map_lookup_elem(&dlba_deny, &key)) {
			st->c[DLBA_C_DROP_ACL]++;
			return TC_ACT_SHOT;
		}
	}
	__u8 proto = ip->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
		if (proto == IPPROTO_ICMP && !(ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
			return icmp_error(skb, cfg, st, ETH_HLEN + ip->ihl * 4);
		st->c[DLBA_C_PASS_OTHER]++;
		return TC_ACT_OK;
	}

	__u32 sport = 0;
	__u32 rule = DLBA_PORT_BALANCED;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		st->c[DLBA_C_FRAGMENT]++;
	} else {
		__u32 l4off = ETH_HLEN + ip->ihl * 4;
		if (data + l4off + 4 > end) {
			if (skb->len < l4off + 4) {
				st->c[DLBA_C_MALFORMED]++;
				return TC_ACT_OK;
			}
			if (bpf_skb_pull_data(skb, l4off + 4))
				return TC_ACT_OK;
			st->c[DLBA_C_PULLED]++;
			data = (void *)(long)skb->data;
			end = (void *)(long)skb->data_end;
		}
		if (l4off > MAX_HDR - 4)
			return TC_ACT_OK; /* for the verifier: ihl <= 15 */
		__be16 *ports = data + l4off;
		if ((void *)(ports + 2) > end)
			return TC_ACT_OK;
		sport = bpf_ntohs(ports[0]);
		__u32 dport = bpf_ntohs(ports[1]);
		if (!port_named(flags, daddr, dport)) {
			st->c[DLBA_C_DROP_PORT]++;
			return TC_ACT_SHOT;
		}
		__u32 *r = bpf_map_lookup_elem(&dlba_ports, &dport);
		rule = r ? *r : DLBA_PORT_DEFAULT;
	}
	return route(skb, cfg, st, rule, bpf_ntohl(saddr), sport, 1);
}

char LICENSE[] SEC("license") = "GPL";
