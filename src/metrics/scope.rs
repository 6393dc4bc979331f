//! `/metrics?scope=…`: which families a scrape writes.

/// Which families a scrape writes (`/metrics?scope=…`, as HAProxy's exporter): with
/// thousands of backends the per-backend families are most of the output, and a scraper
/// that wants servers only can leave them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    /// `process`: the build information.
    pub process: bool,
    /// `server`: the families labelled by server.
    pub servers: bool,
    /// `backend`: the families labelled by server and backend.
    pub backends: bool,
}

impl Scope {
    pub const ALL: Scope = Scope {
        process: true,
        servers: true,
        backends: true,
    };

    /// The scope a query string asks for: every `scope=NAME` (`process`, `server`,
    /// `backend`, or `*` for all) adds its families; no `scope` at all is everything.
    pub fn from_query(query: Option<&str>) -> Result<Scope, String> {
        let mut scope = Scope {
            process: false,
            servers: false,
            backends: false,
        };
        let mut any = false;
        let pairs = query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty());
        for pair in pairs {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key != "scope" {
                return Err(format!("unknown parameter \"{key}\"; expected scope"));
            }
            any = true;
            match value {
                "process" => scope.process = true,
                "server" => scope.servers = true,
                "backend" => scope.backends = true,
                "*" | "%2A" => scope = Scope::ALL,
                // HAProxy's: an empty scope asks for nothing (a way to list no family).
                "" => {}
                other => {
                    return Err(format!(
                        "unknown scope \"{other}\"; expected process, server, backend or *"
                    ))
                }
            }
        }
        Ok(if any { scope } else { Scope::ALL })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_unknown_ones_are_errors() {
        assert_eq!(Scope::from_query(None), Ok(Scope::ALL));
        assert_eq!(Scope::from_query(Some("scope=*")), Ok(Scope::ALL));
        let two = Scope::from_query(Some("scope=server&scope=process")).unwrap();
        assert!(two.servers && two.process && !two.backends);
        assert!(Scope::from_query(Some("scope=servers")).is_err());
        assert!(Scope::from_query(Some("limit=3")).is_err());
    }
}
