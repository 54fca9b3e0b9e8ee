// SPDX-License-Identifier: Apache-2.0
//
// xdpmesh steering program: sends to the queue's AF_XDP socket only what the
// gateway owns and passes everything else to the kernel, so a node stays
// reachable (SSH, ...) on the same NIC.
//
// Owned:
//   - ARP whose target protocol address is a local address (requests for us,
//     replies to our requests);
//   - IPv4 ICMP to a local address;
//   - IPv4 TCP to a local address whose destination port is a configured
//     listener (exact address or wildcard 0.0.0.0) or in the ephemeral range
//     the gateway opens connections from.
// In `dedicated` mode every frame is owned.
//
// Owned TCP (and everything in dedicated mode) with no socket in the XSKMAP
// for the receiving queue is dropped: passing it would make the kernel answer
// with RST for a port it does not listen on. Owned ARP/ICMP with no socket is
// passed: harmless, and it keeps the host answering while no worker runs.
//
// Userspace (dataplane/src/xdp/steer.rs) fills the maps; the layouts of
// `struct steer_cfg`, `struct listener_key` and the STAT_* indices are mirrored
// there and must change together.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MAX_QUEUES 256
#define MAX_LOCAL_ADDRS 256
#define MAX_LISTENERS 4096

enum stat {
	STAT_PASS = 0,            // not owned: handed to the kernel
	STAT_REDIRECT_TCP = 1,
	STAT_REDIRECT_ARP = 2,
	STAT_REDIRECT_ICMP = 3,
	STAT_REDIRECT_DEDICATED = 4,
	STAT_DROP_NO_SOCKET = 5,  // owned TCP / dedicated, no socket on the queue
	STAT_PASS_NO_SOCKET = 6,  // owned ARP / ICMP, no socket on the queue
	STAT_PASS_FRAGMENT = 7,   // non-first IPv4 fragment to a local address
	STAT_MAX = 8,
};

struct steer_cfg {
	__u32 dedicated; // non-zero: steer every frame
	__u16 eph_lo;    // ephemeral port range, host byte order, inclusive;
	__u16 eph_hi;    // eph_lo > eph_hi means "no range"
};

struct listener_key {
	__u32 addr; // IPv4, network byte order; 0 = any local address
	__u16 port; // network byte order
	__u16 pad;  // always 0
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_cfg);
} cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LOCAL_ADDRS);
	__type(key, __u32);   // IPv4, network byte order
	__type(value, __u8);
} local_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LISTENERS);
	__type(key, struct listener_key);
	__type(value, __u8);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1; // per-CPU slot: no atomics needed
}

static __always_inline int pass(__u32 idx)
{
	count(idx);
	return XDP_PASS;
}

// Redirect to this queue's socket; the low bits of the flags argument are the
// action returned when the XSKMAP has no entry for the queue (kernel >= 5.6).
static __always_inline int steer(struct xdp_md *ctx, __u32 ok_stat, int fallback)
{
	int act = bpf_redirect_map(&xsks, ctx->rx_queue_index, fallback);
	if (act == XDP_REDIRECT)
		count(ok_stat);
	else
		count(fallback == XDP_DROP ? STAT_DROP_NO_SOCKET : STAT_PASS_NO_SOCKET);
	return act;
}

static __always_inline int is_local(__u32 addr)
{
	return bpf_map_lookup_elem(&local_addrs, &addr) != 0;
}

// ARP for Ethernet/IPv4 (RFC 826): fixed 8-byte header, then sha[6] spa[4]
// tha[6] tpa[4].
struct arp_eth_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

SEC("xdp")
int xdpmesh_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

	struct steer_cfg *c = bpf_map_lookup_elem(&cfg, &zero);
	if (!c)
		return pass(STAT_PASS);
	if (c->dedicated)
		return steer(ctx, STAT_REDIRECT_DEDICATED, XDP_DROP);

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return pass(STAT_PASS);

	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		struct arp_eth_ipv4 *arp = (void *)(eth + 1);
		if ((void *)(arp + 1) > data_end)
			return pass(STAT_PASS);
		if (arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IP) ||
		    arp->hlen != 6 || arp->plen != 4)
			return pass(STAT_PASS);
		__u32 tpa;
		__builtin_memcpy(&tpa, arp->tpa, 4);
		if (!is_local(tpa))
			return pass(STAT_PASS);
		return steer(ctx, STAT_REDIRECT_ARP, XDP_PASS);
	}

	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return pass(STAT_PASS);

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return pass(STAT_PASS);
	if (ip->version != 4 || ip->ihl < 5)
		return pass(STAT_PASS);
	if (!is_local(ip->daddr))
		return pass(STAT_PASS);

	if (ip->protocol == IPPROTO_ICMP)
		return steer(ctx, STAT_REDIRECT_ICMP, XDP_PASS);
	if (ip->protocol != IPPROTO_TCP)
		return pass(STAT_PASS);

	// A non-first fragment carries no TCP header, so its port is unknown.
	if (ip->frag_off & bpf_htons(0x1fff))
		return pass(STAT_PASS_FRAGMENT);

	struct tcphdr *tcp = (void *)ip + ip->ihl * 4;
	if ((void *)(tcp + 1) > data_end)
		return pass(STAT_PASS);

	__u16 dport = bpf_ntohs(tcp->dest);
	if (c->eph_lo <= dport && dport <= c->eph_hi)
		return steer(ctx, STAT_REDIRECT_TCP, XDP_DROP);

	struct listener_key k = { .addr = ip->daddr, .port = tcp->dest, .pad = 0 };
	if (bpf_map_lookup_elem(&listeners, &k))
		return steer(ctx, STAT_REDIRECT_TCP, XDP_DROP);
	k.addr = 0;
	if (bpf_map_lookup_elem(&listeners, &k))
		return steer(ctx, STAT_REDIRECT_TCP, XDP_DROP);

	return pass(STAT_PASS);
}

char LICENSE[] SEC("license") = "Apache-2.0";
