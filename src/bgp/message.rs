//! What a session sends: OPEN with our capabilities, the UPDATEs that take a neighbour
//! from one set of prefixes to another, and the NOTIFICATIONs that end a session.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use netgauze_bgp_pkt::capabilities::{
    BgpCapability, FourOctetAsCapability, MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_bgp_pkt::notification::{BgpNotificationMessage, CeaseError, HoldTimerExpiredError};
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_bgp_pkt::path_attribute::{
    As4PathSegment, AsPath, AsPathSegmentType, MpReach, MpUnreach, NextHop, Origin, PathAttribute,
    PathAttributeValue,
};
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_iana::address_family::AddressType;

use super::session::{Local, Peer};

/// The AS number a speaker with a 4-octet AS writes in OPEN's 2-octet field (RFC 6793).
const AS_TRANS: u16 = 23_456;

/// The NOTIFICATION that ends a session on purpose (Administrative Shutdown): the
/// router drops its routes at once.
pub(super) fn cease() -> BgpMessage {
    let cease = CeaseError::AdministrativeShutdown {
        value: Box::new([]),
    };
    BgpMessage::Notification(BgpNotificationMessage::CeaseError(cease))
}

/// The NOTIFICATION for a neighbour silent past the hold time.
pub(super) fn hold_timer_expired() -> BgpMessage {
    let expired = HoldTimerExpiredError::Unspecific {
        sub_code: 0,
        value: Box::new([]),
    };
    BgpMessage::Notification(BgpNotificationMessage::HoldTimerExpiredError(expired))
}

pub(super) fn open(local: &Local, hold_secs: u16) -> BgpOpenMessage {
    let two_octet = u16::try_from(local.asn).unwrap_or(AS_TRANS);
    let capabilities = [
        BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
            AddressType::Ipv4Unicast,
        )),
        BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
            AddressType::Ipv6Unicast,
        )),
        BgpCapability::FourOctetAs(FourOctetAsCapability::new(local.asn)),
    ];
    BgpOpenMessage::new(
        two_octet,
        hold_secs,
        local.router_id,
        [BgpOpenMessageParameter::new_capabilities(capabilities)],
    )
}

/// The UPDATEs that take the neighbour from `before` to `after`: IPv4 withdrawals and
/// announcements in the message's own fields, IPv6 ones in MP_UNREACH/MP_REACH (with
/// `ours` as the next hop when it is IPv6). Each prefix family needs a session address
/// of its family for a next hop; one without is left out.
pub(super) fn updates(
    local: &Local,
    peer: &Peer,
    ours: IpAddr,
    before: &BTreeSet<IpNet>,
    after: &BTreeSet<IpNet>,
) -> Vec<BgpUpdateMessage> {
    let gone: Vec<&IpNet> = before.difference(after).collect();
    let new: Vec<&IpNet> = after.difference(before).collect();
    let v4 = |nets: &[&IpNet]| -> Vec<Ipv4UnicastAddress> {
        nets.iter()
            .filter_map(|net| match net {
                IpNet::V4(v4) => Ipv4Unicast::from_net(*v4).ok(),
                IpNet::V6(_) => None,
            })
            .map(Ipv4UnicastAddress::new_no_path_id)
            .collect()
    };
    let v6 = |nets: &[&IpNet]| -> Vec<Ipv6UnicastAddress> {
        nets.iter()
            .filter_map(|net| match net {
                IpNet::V6(v6) => Ipv6Unicast::from_net(*v6).ok(),
                IpNet::V4(_) => None,
            })
            .map(|net| Ipv6UnicastAddress::new(None, net))
            .collect()
    };
    let mut messages = Vec::new();
    let (gone4, gone6) = (v4(&gone), v6(&gone));
    if !gone4.is_empty() {
        messages.push(BgpUpdateMessage::new(gone4, Vec::new(), Vec::new()));
    }
    if !gone6.is_empty() {
        let unreach = MpUnreach::Ipv6Unicast { nlri: gone6.into() };
        let attributes: Vec<PathAttribute> =
            attribute(PathAttributeValue::MpUnreach(unreach), true, false)
                .into_iter()
                .collect();
        messages.push(BgpUpdateMessage::new(Vec::new(), attributes, Vec::new()));
    }
    let (new4, new6) = (v4(&new), v6(&new));
    // eBGP: our AS on the path; iBGP: an empty path and a local preference.
    let path: Vec<u32> = if peer.remote_as == local.asn {
        Vec::new()
    } else {
        vec![local.asn]
    };
    let common = || {
        let segments = if path.is_empty() {
            Vec::new()
        } else {
            vec![As4PathSegment::new(
                AsPathSegmentType::AsSequence,
                path.clone(),
            )]
        };
        let mut attributes = vec![
            attribute(PathAttributeValue::Origin(Origin::IGP), false, true),
            attribute(
                PathAttributeValue::AsPath(AsPath::As4PathSegments(segments.into())),
                false,
                true,
            ),
        ];
        if peer.remote_as == local.asn {
            attributes.push(attribute(
                PathAttributeValue::LocalPreference(
                    netgauze_bgp_pkt::path_attribute::LocalPreference::new(100),
                ),
                false,
                true,
            ));
        }
        attributes
    };
    if let (false, IpAddr::V4(next_hop)) = (new4.is_empty(), ours) {
        let mut attributes: Vec<PathAttribute> = common().into_iter().flatten().collect();
        attributes.extend(attribute(
            PathAttributeValue::NextHop(NextHop::new(next_hop)),
            false,
            true,
        ));
        messages.push(BgpUpdateMessage::new(Vec::new(), attributes, new4));
    }
    if let (false, IpAddr::V6(next_hop)) = (new6.is_empty(), ours) {
        let reach = MpReach::Ipv6Unicast {
            next_hop_global: next_hop,
            next_hop_local: None::<Ipv6Addr>,
            nlri: new6.into(),
        };
        let mut attributes: Vec<PathAttribute> = common().into_iter().flatten().collect();
        attributes.extend(attribute(PathAttributeValue::MpReach(reach), true, false));
        messages.push(BgpUpdateMessage::new(Vec::new(), attributes, Vec::new()));
    }
    messages
}

/// A path attribute with its flags; `None` only if the crate refuses the flags, which
/// these fixed pairs never are.
fn attribute(value: PathAttributeValue, optional: bool, transitive: bool) -> Option<PathAttribute> {
    PathAttribute::from(optional, transitive, false, true, value).ok()
}
