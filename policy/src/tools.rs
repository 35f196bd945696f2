//! Tool rules: may this caller use this tool, and if not, which policy and
//! which rule says so. The same verdict governs MCP calls through the
//! gateway, the tools a chat request offers, and tool calls in a model's
//! answer, always on the tool's exposed name (`server.tool` for MCP).

use crate::config::ToolScope;
use crate::policy::Policy;
use std::fmt;

/// Why a policy refused a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolRule<'a> {
    /// `tools.denied` matched, by this pattern.
    Denied(&'a str),
    /// `tools.allowed` is set and nothing in it matched.
    NotAllowed,
    /// `tools.scopes` does not include the tool's scope (`None`: unknown).
    Scope(Option<ToolScope>),
}

impl ToolRule<'_> {
    /// The rule as the config spells it (`tools.denied: billing.*`).
    pub fn describe(&self) -> String {
        match self {
            ToolRule::Denied(p) => format!("tools.denied: {p}"),
            ToolRule::NotAllowed => "tools.allowed".to_owned(),
            ToolRule::Scope(_) => "tools.scopes".to_owned(),
        }
    }
}

/// The decision on one tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolVerdict<'a> {
    Allowed,
    Refused { policy: &'a str, rule: ToolRule<'a> },
}

impl ToolVerdict<'_> {
    pub fn is_allowed(&self) -> bool {
        matches!(self, ToolVerdict::Allowed)
    }
}

impl fmt::Display for ToolVerdict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolVerdict::Allowed => f.write_str("allowed"),
            ToolVerdict::Refused { policy, rule } => match rule {
                ToolRule::Denied(p) => {
                    write!(f, "denied by policy `{policy}` (tools.denied `{p}`)")
                }
                ToolRule::NotAllowed => {
                    write!(f, "not in policy `{policy}`'s tools.allowed")
                }
                ToolRule::Scope(s) => write!(
                    f,
                    "policy `{policy}` allows only its tools.scopes, and this tool's scope is {}",
                    s.map_or("unknown", ToolScope::as_str)
                ),
            },
        }
    }
}

/// Deny lists first (deny wins over every allow), then each policy's allow
/// list and scopes, most specific policy first.
pub(crate) fn decide<'a>(
    applicable: &[&'a Policy],
    tool: &str,
    scope: Option<ToolScope>,
) -> ToolVerdict<'a> {
    decide_with(applicable, tool, Some(scope))
}

/// `scope: None` skips the scope rules (for tools whose scope the gateway
/// cannot know: the client's own functions a model calls).
pub(crate) fn decide_with<'a>(
    applicable: &[&'a Policy],
    tool: &str,
    scope: Option<Option<ToolScope>>,
) -> ToolVerdict<'a> {
    for p in applicable {
        if let Some(g) = p.tools_denied.iter().find(|g| g.matches(tool)) {
            return ToolVerdict::Refused {
                policy: &p.name,
                rule: ToolRule::Denied(g.as_str()),
            };
        }
    }
    for p in applicable {
        if !p.tools_allowed.is_empty() && !p.tools_allowed.matches(tool) {
            return ToolVerdict::Refused {
                policy: &p.name,
                rule: ToolRule::NotAllowed,
            };
        }
        if let Some(scope) = scope {
            if !p.tool_scopes.is_empty() && !scope.is_some_and(|s| p.tool_scopes.contains(&s)) {
                return ToolVerdict::Refused {
                    policy: &p.name,
                    rule: ToolRule::Scope(scope),
                };
            }
        }
    }
    ToolVerdict::Allowed
}

#[cfg(test)]
mod tests {
    use crate::config::{PolicyEntry, ToolScope};
    use crate::identity::{Actor, ActorFields};
    use crate::tools::{ToolRule, ToolVerdict};
    use crate::PolicySet;

    fn set(yaml: &str) -> PolicySet {
        let entries: Vec<PolicyEntry> = serde_yaml_ng::from_str(yaml).unwrap();
        PolicySet::compile(&entries).unwrap()
    }

    fn actor() -> Actor {
        Actor::new(ActorFields {
            key_id: "k1".into(),
            team: Some("support".into()),
            tenant: None,
            app: None,
            environment: None,
        })
    }

    #[test]
    fn deny_wins_and_names_the_rule() {
        let s = set(r#"
- ai_runtime_policy:
    name: everyone
    actor_scope: {}
    tools: { allowed: ["billing.*"] }
- ai_runtime_policy:
    name: support
    actor_scope: { team: support }
    tools: { denied: ["billing.update_*"] }
"#);
        let a = actor();
        let r = s.resolve(&a);
        assert_eq!(
            r.decide_tool("billing.read_status", None),
            ToolVerdict::Allowed
        );
        assert_eq!(
            r.decide_tool("billing.update_card", None),
            ToolVerdict::Refused {
                policy: "support",
                rule: ToolRule::Denied("billing.update_*")
            }
        );
        let v = r.decide_tool("tickets.create", None);
        assert_eq!(
            v,
            ToolVerdict::Refused {
                policy: "everyone",
                rule: ToolRule::NotAllowed
            }
        );
        assert!(v.to_string().contains("everyone"));
    }

    #[test]
    fn scopes_refuse_write_and_unknown() {
        let s = set(r#"
- ai_runtime_policy:
    name: readers
    actor_scope: {}
    tools: { scopes: [read] }
"#);
        let a = actor();
        let r = s.resolve(&a);
        assert!(r.decide_tool("x.get", Some(ToolScope::Read)).is_allowed());
        assert_eq!(
            r.decide_tool("x.put", Some(ToolScope::Write)),
            ToolVerdict::Refused {
                policy: "readers",
                rule: ToolRule::Scope(Some(ToolScope::Write))
            }
        );
        assert!(!r.decide_tool("x.unknown", None).is_allowed());
    }
}
