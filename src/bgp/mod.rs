//! BGP: Sluice announces its servers' addresses to routers itself (as MetalLB and
//! kube-vip do), so several nodes can share a service address by ECMP.
//!
//! - `session`: one neighbour's session: connect, OPEN, KEEPALIVEs, UPDATEs announcing and
//!   withdrawing what it is told to, retried after a back-off when it fails.

pub mod session;
