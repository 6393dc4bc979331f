//! Access rules: allow or deny clients by IP address or CIDR, first match wins.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// What a rule (or the default) does with a matching client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Action::Allow),
            "deny" => Ok(Action::Deny),
            other => Err(format!("expected \"allow\" or \"deny\", got \"{other}\"")),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// One `"allow 10.0.0.0/8"` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub net: IpNet,
}

impl FromStr for Rule {
    type Err = String;

    /// GoBetween's grammar: `allow|deny ADDRESS[/PREFIX]`, IPv4 or IPv6.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut words = s.split_whitespace();
        let (Some(action), Some(target), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "rule \"{s}\" must be \"allow ADDRESS[/PREFIX]\" or \"deny ADDRESS[/PREFIX]\""
            ));
        };
        let action = action.parse()?;
        let net = parse_network(target)?;
        Ok(Rule { action, net })
    }
}

/// `ADDRESS` or `ADDRESS/PREFIX`, IPv4 or IPv6; host bits of a CIDR are cleared.
pub fn parse_network(target: &str) -> Result<IpNet, String> {
    if target.contains('/') {
        Ok(target
            .parse::<IpNet>()
            .map_err(|_| format!("\"{target}\" is not an IP network (CIDR)"))?
            .trunc())
    } else {
        Ok(IpNet::from(target.parse::<IpAddr>().map_err(|_| {
            format!("\"{target}\" is not an IP address")
        })?))
    }
}

/// Whether `ip` is in one of `nets`; IPv4-mapped IPv6 addresses match IPv4 networks.
pub fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|net| net.contains(&ip))
}

/// `[servers.NAME.access]`: rules in order, then the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    pub default: Action,
    pub rules: Vec<Rule>,
}

/// Whether a server's access rules (`None`: it has none) refuse `client`: for TCP the
/// peer, or the client a trusted front's PROXY header named; for UDP each datagram's
/// sender. The one place the data path asks.
pub fn denies(access: Option<&Acl>, client: IpAddr) -> bool {
    access.is_some_and(|acl| !acl.allows(client))
}

impl Acl {
    /// Whether `client` may connect. IPv4-mapped IPv6 clients match IPv4 rules.
    pub fn allows(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.rules
            .iter()
            .find(|r| r.net.contains(&client))
            .map_or(self.default, |r| r.action)
            == Action::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(default: Action, rules: &[&str]) -> Acl {
        Acl {
            default,
            rules: rules.iter().map(|r| r.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn first_match_wins() {
        let a = acl(Action::Deny, &["deny 10.0.0.5", "allow 10.0.0.0/8"]);
        assert!(!a.allows("10.0.0.5".parse().unwrap()));
        assert!(a.allows("10.1.2.3".parse().unwrap()));
        assert!(!a.allows("192.168.1.1".parse().unwrap()));
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let a = acl(Action::Allow, &["deny ::1", "deny 127.0.0.0/8"]);
        assert!(!a.allows("::1".parse().unwrap()));
        assert!(!a.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(a.allows("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn bad_rules_are_explained() {
        assert!("permit 1.2.3.4"
            .parse::<Rule>()
            .unwrap_err()
            .contains("allow"));
        assert!("allow 1.2.3"
            .parse::<Rule>()
            .unwrap_err()
            .contains("not an IP"));
        assert!("allow 1.2.3.4/40"
            .parse::<Rule>()
            .unwrap_err()
            .contains("CIDR"));
        assert!("allow".parse::<Rule>().is_err());
    }
}
