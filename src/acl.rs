//! Access rules: allow or deny clients by IP address or CIDR, first match wins; a rule
//! may also name where the client is going (`to`): an intercepted connection's original
//! destination, or the address a client connected to.

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

/// One `"allow 10.0.0.0/8"` rule, or `"deny 0.0.0.0/0 to 198.51.100.0/24"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub net: IpNet,
    /// Where the client is going, when the rule names it: the rule then matches only a
    /// connection (datagram) to there.
    pub to: Option<IpNet>,
}

impl FromStr for Rule {
    type Err = String;

    /// GoBetween's grammar, `allow|deny ADDRESS[/PREFIX]`, IPv4 or IPv6, and Sluice's
    /// `… to ADDRESS[/PREFIX]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let (action, target, to) = match words.as_slice() {
            [action, target] => (action, target, None),
            [action, target, "to", to] => (action, target, Some(to)),
            _ => {
                return Err(format!(
                    "rule \"{s}\" must be \"allow ADDRESS[/PREFIX]\" or \"deny ADDRESS[/PREFIX]\", \
                     optionally followed by \"to ADDRESS[/PREFIX]\""
                ))
            }
        };
        Ok(Rule {
            action: action.parse()?,
            net: parse_network(target)?,
            to: to.map(|to| parse_network(to)).transpose()?,
        })
    }
}

/// As it is written.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action, self.net)?;
        if let Some(to) = self.to {
            write!(f, " to {to}")?;
        }
        Ok(())
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

/// Whether a server's access rules (`None`: it has none) refuse `client` going to
/// `destination` (when known): for TCP the peer, or the client a trusted front's PROXY
/// header named; for UDP each datagram's sender. The one place the data path asks.
pub fn denies(access: Option<&Acl>, client: IpAddr, destination: Option<IpAddr>) -> bool {
    access.is_some_and(|acl| !acl.allows(client, destination))
}

impl Acl {
    /// Whether `client` may connect to `destination` (a rule naming one matches only
    /// when it is known and in it). IPv4-mapped IPv6 addresses match IPv4 rules.
    pub fn allows(&self, client: IpAddr, destination: Option<IpAddr>) -> bool {
        let client = client.to_canonical();
        let destination = destination.map(|d| d.to_canonical());
        let goes_to = |to: &Option<IpNet>| match (to, destination) {
            (None, _) => true,
            (Some(to), Some(destination)) => to.contains(&destination),
            (Some(_), None) => false,
        };
        self.rules
            .iter()
            .find(|r| r.net.contains(&client) && goes_to(&r.to))
            .map_or(self.default, |r| r.action)
            == Action::Allow
    }

    /// Whether a rule names where clients are going: then the data path finds out.
    pub fn names_destinations(&self) -> bool {
        self.rules.iter().any(|r| r.to.is_some())
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
        assert!(!a.allows("10.0.0.5".parse().unwrap(), None));
        assert!(a.allows("10.1.2.3".parse().unwrap(), None));
        assert!(!a.allows("192.168.1.1".parse().unwrap(), None));
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let a = acl(Action::Allow, &["deny ::1", "deny 127.0.0.0/8"]);
        assert!(!a.allows("::1".parse().unwrap(), None));
        assert!(!a.allows("::ffff:127.0.0.1".parse().unwrap(), None));
        assert!(a.allows("2001:db8::1".parse().unwrap(), None));
    }

    #[test]
    fn a_rule_may_name_where_the_client_is_going() {
        let a = acl(Action::Allow, &["deny 0.0.0.0/0 to 198.51.100.0/24"]);
        let (client, ip) = ("10.0.0.5".parse().unwrap(), |s: &str| s.parse().ok());
        assert!(!a.allows(client, ip("198.51.100.7")));
        assert!(a.allows(client, ip("192.0.2.1")));
        // Not known: the rule does not match.
        assert!(a.allows(client, None));
        assert_eq!(a.rules[0].to_string(), "deny 0.0.0.0/0 to 198.51.100.0/24");
        assert!("deny 10.0.0.0/8 via 1.2.3.4".parse::<Rule>().is_err());
        assert!("deny 10.0.0.0/8 to nowhere".parse::<Rule>().is_err());
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
