/* Shared layout of the DLBA tc program's maps. scheduler/dataplane_ebpf.py mirrors these numbers
 * (struct formats and counter indices); tests/array/test_bpf_prog.py checks they agree. */
#ifndef DLBA_TC_H
#define DLBA_TC_H

#define DLBA_MAX_NODES 64
#define DLBA_MAX_VIPS 4096 /* MAX_VIPS in dlba/config/services.py */
#define DLBA_MAX_VIP_PORTS 65536 /* (VIP, port) pairs the services name */

/* VIP flags (dlba_vips map values, dlba_config.vip_flags). */
#define DLBA_VIP_ANY_PORT 1 /* every port: the port rules alone decide (no [[services]]) */
#define DLBA_NO_NODE 0xffffffffu

/* ports map value: what to do with a VIP destination port. */
#define DLBA_PORT_DEFAULT 0  /* no rule: default node, or drop when there is none */
#define DLBA_PORT_BALANCED 1 /* the client table decides */
#define DLBA_PORT_PINNED 2   /* value - DLBA_PORT_PINNED is the node index */

/* Counter slots in the per-CPU stats map: 0..DLBA_MAX_NODES-1 are packets per node index. */
#define DLBA_C_DROP_ACL (DLBA_MAX_NODES + 0)
#define DLBA_C_DROP_PORT (DLBA_MAX_NODES + 1)
#define DLBA_C_DROP_NO_NODE (DLBA_MAX_NODES + 2)
#define DLBA_C_FRAGMENT (DLBA_MAX_NODES + 3)
#define DLBA_C_REDIRECT (DLBA_MAX_NODES + 4)
#define DLBA_C_PASS_SELF (DLBA_MAX_NODES + 5)
#define DLBA_C_PASS_OTHER (DLBA_MAX_NODES + 6)
#define DLBA_C_MALFORMED (DLBA_MAX_NODES + 7)
#define DLBA_C_PULLED (DLBA_MAX_NODES + 8) /* headers were not linear: bpf_skb_pull_data */
#define DLBA_C_ICMP (DLBA_MAX_NODES + 9) /* ICMP errors routed by the flow they carry */
#define DLBA_C_NUM (DLBA_MAX_NODES + 10)

struct dlba_config {
	__u32 vip; /* network byte order */
	__u32 buckets;
	__u32 self_index; /* DLBA_NO_NODE until set_self */
	__u32 default_node; /* DLBA_NO_NODE: ports without a rule are dropped */
	__u8 own_mac[6];
	__u8 vip_flags; /* of `vip`, the cluster's VIP, compared before the dlba_vips lookup */
	__u8 pad;
	__u32 deny_count; /* 0: skip the deny trie lookup (about 25 ns) */
};

struct dlba_node {
	__u8 mac[6];
	__u8 valid;
	__u8 pad;
};

struct dlba_stats {
	__u64 c[DLBA_C_NUM];
};

struct dlba_vip_port {
	__u32 addr; /* network byte order */
	__u32 port; /* host byte order */
};

struct dlba_lpm_key {
	__u32 prefixlen;
	__u32 addr; /* network byte order */
};

#endif
