//! Request URLs: which resource, namespace, object and subresource a path
//! names, and the query parameters.

use super::registry::Subresource;
use super::resources::Resource;

/// What a request path addresses.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Route {
    pub resource: Resource,
    /// For namespaced resources: `None` is the all-namespaces collection.
    pub namespace: Option<String>,
    /// `None` for the collection.
    pub name: Option<String>,
    pub subresource: Subresource,
}

/// Parses `/api/v1/…` and `/apis/{group}/{version}/…` paths; `None` when the
/// path names nothing the double serves.
pub(crate) fn parse(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    // `/api/v1/namespaces/{name}[/status]` is a Namespace itself, not a namespace prefix.
    let namespace_object = group.is_empty()
        && rest.first() == Some(&"namespaces")
        && (rest.len() == 2 || (rest.len() == 3 && rest[2] == "status"));
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() && !namespace_object => {
            (Some((*ns).to_string()), tail)
        }
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return None,
    };
    let resource = Resource::lookup(group, version, plural)?;
    let scoped_right = if resource.namespaced() {
        namespace.is_some() || name.is_none()
    } else {
        namespace.is_none()
    };
    if !scoped_right || [namespace.as_deref(), name].contains(&Some("")) {
        return None;
    }
    let subresource = match subresource {
        None => Subresource::Main,
        Some("status") if resource.has_status_subresource() => Subresource::Status,
        Some(_) => return None,
    };
    Some(Route {
        resource,
        namespace,
        name: name.map(String::from),
        subresource,
    })
}

/// Decoded query parameters (`application/x-www-form-urlencoded`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: &str) -> Query {
        let pairs = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (decode(key), decode(value))
            })
            .collect();
        Query(pairs)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter, true as Go's `strconv.ParseBool` reads it.
    pub fn flag(&self, key: &str) -> bool {
        matches!(
            self.get(key),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = || {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            u8::from_str_radix(hex, 16).ok()
        };
        let byte = match bytes[i] {
            b'+' => b' ',
            b'%' => match escaped() {
                Some(byte) => {
                    i += 2;
                    byte
                }
                None => b'%',
            },
            byte => byte,
        };
        out.push(byte);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> Option<(Resource, Option<String>, Option<String>, Subresource)> {
        parse(path).map(|r| (r.resource, r.namespace, r.name, r.subresource))
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn paths_name_resources_like_the_real_server() {
        use Resource::*;
        use Subresource::*;
        assert_eq!(
            route("/apis/llmd.ai/v1alpha1/namespaces/ns/variantautoscalings/va/status"),
            Some((VariantAutoscalings, some("ns"), some("va"), Status))
        );
        assert_eq!(
            route("/apis/apps/v1/deployments"),
            Some((Deployments, None, None, Main))
        );
        assert_eq!(
            route("/api/v1/namespaces/ns/pods"),
            Some((Pods, some("ns"), None, Main))
        );
        assert_eq!(
            route("/api/v1/namespaces"),
            Some((Namespaces, None, None, Main))
        );
        assert_eq!(
            route("/api/v1/namespaces/ns"),
            Some((Namespaces, None, some("ns"), Main))
        );
        assert_eq!(
            route("/api/v1/namespaces/ns/status"),
            Some((Namespaces, None, some("ns"), Status))
        );
        assert_eq!(
            route("/apis/authentication.k8s.io/v1/tokenreviews"),
            Some((TokenReviews, None, None, Main))
        );
    }

    #[test]
    fn unknown_or_mis_scoped_paths_name_nothing() {
        for path in [
            "/api/v1/widgets",
            "/api/v2/pods",
            "/api/v1/pods/p",
            "/api/v1/namespaces/ns/namespaces/x",
            "/api/v1/namespaces/ns/configmaps/c/status",
            "/apis/apps/v1/namespaces/ns/deployments/d/scale",
            "/healthz",
        ] {
            assert_eq!(parse(path), None, "{path}");
        }
    }

    #[test]
    fn queries_are_form_decoded() {
        let query = Query::parse("&labelSelector=app%3Dweb%2Cenv+in+(a)&watch=1&x");
        assert_eq!(query.get("labelSelector"), Some("app=web,env in (a)"));
        assert!(query.flag("watch"));
        assert_eq!(query.get("x"), Some(""));
        assert_eq!(Query::parse("a=%zz%4").get("a"), Some("%zz%4"));
    }
}
