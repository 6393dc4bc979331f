// Kernel-side relaying of established plain TCP connections (see src/proxy/kernel.rs).
//
// Every relayed socket is in `targets` under its socket cookie; a socket whose bytes are
// relayed is in `sources` too, where this stream verdict program sees each of its
// received buffers and sends it out of its peer (`peers`: cookie -> the peer's cookie),
// without waking user space. A socket with no peer keeps its bytes (SK_PASS).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} peers SEC(".maps");

SEC("sk_skb/stream_verdict")
int relay(struct __sk_buff *skb)
{
	// The buffer of a bare FIN: user space sees the end and passes it on once every
	// byte before it has been written (redirected, it would be sent after that FIN).
	if (skb->len == 0)
		return SK_PASS;
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u64 *peer = bpf_map_lookup_elem(&peers, &cookie);
	if (!peer)
		return SK_PASS;
	__u64 key = *peer;
	return bpf_sk_redirect_hash(skb, &targets, &key, 0);
}

char LICENSE[] SEC("license") = "GPL";
