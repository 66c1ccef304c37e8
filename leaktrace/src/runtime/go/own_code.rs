//! Which functions are the program's own code (its main module and the
//! modules it depends on) and which are the Go runtime's and standard
//! library's: the first own frame of a blocked stack is where it is stuck.
//!
//! The binary's build info lists the modules; the standard library is what
//! belongs to none of them. The shape of a package path (a dot in its first
//! element) is only the fallback for binaries without module info (GOPATH
//! builds, build info stripped): a module named `backend` or `app` has no
//! dot, and every frame of it would count as the standard library.
#[derive(Clone, Debug, Default)]
pub struct OwnCode {
    /// Module paths: the main module first, then its dependencies.
    modules: Vec<String>,
}

impl OwnCode {
    pub fn new(main_module: Option<&str>, deps: impl IntoIterator<Item = String>) -> Self {
        let mut modules: Vec<String> = main_module
            .into_iter()
            .map(str::to_owned)
            .chain(deps)
            .filter(|m| !m.is_empty())
            .collect();
        // Longest first, so a nested module wins over its parent.
        modules.sort_by_key(|m| std::cmp::Reverse(m.len()));
        modules.dedup();
        Self { modules }
    }

    /// Whether `function` (as the runtime prints it, e.g.
    /// `backend/api.(*Server).serve.func1`) is the program's own code.
    pub fn is_own(&self, function: &str) -> bool {
        let pkg = package_of(function);
        if pkg == "main" || pkg.ends_with(".test") {
            return true;
        }
        if self.modules.is_empty() {
            return !is_stdlib_shaped(pkg);
        }
        self.modules.iter().any(|m| in_module(function, m))
    }
}

/// `net/http.(*conn).serve` → `net/http`; `main.main.func1` → `main`.
pub fn package_of(function: &str) -> &str {
    let tail_start = function.rfind('/').map_or(0, |slash| slash + 1);
    let end = function[tail_start..]
        .find('.')
        .map_or(function.len(), |d| tail_start + d);
    &function[..end]
}

/// By the function's full name, not its package: `gopkg.in/yaml.v3.f` is in
/// module `gopkg.in/yaml.v3`, though the package part of the name reads
/// `gopkg.in/yaml` (a dot in the last path element is ambiguous).
fn in_module(function: &str, module: &str) -> bool {
    function.starts_with(module)
        && matches!(function.as_bytes().get(module.len()), Some(b'/' | b'.'))
}

/// The fallback rule: standard-library import paths have no dot in their
/// first element.
fn is_stdlib_shaped(pkg: &str) -> bool {
    let first = pkg.split('/').next().unwrap_or(pkg);
    !first.contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_from_build_info_decide() {
        let own = OwnCode::new(
            Some("backend"),
            [
                "github.com/acme/lib".to_string(),
                "gopkg.in/yaml.v3".to_string(),
            ],
        );
        for f in [
            "backend/api.(*Server).serve.func1",
            "backend.handler",
            "main.main.func1",
            "github.com/acme/lib/pool.(*P).worker",
            "backend/api.test.TestX",
            "gopkg.in/yaml.v3.unmarshal",
        ] {
            assert!(own.is_own(f), "{f}");
        }
        for f in [
            "runtime.gopark",
            "net/http.(*conn).serve",
            "internal/poll.(*FD).Read",
            "backendx/api.f",
            "github.com/other/lib.f",
        ] {
            assert!(!own.is_own(f), "{f}");
        }
    }

    #[test]
    fn without_build_info_the_path_shape_decides() {
        let own = OwnCode::default();
        assert!(own.is_own("github.com/acme/api/handlers.(*H).ServeHTTP"));
        assert!(own.is_own("main.leak.func1"));
        assert!(!own.is_own("sync.(*WaitGroup).Wait"));
        assert_eq!(package_of("net/http.(*conn).serve"), "net/http");
        // As Go's own funcpkgpath reads it.
        assert_eq!(package_of("gopkg.in/yaml.v3.unmarshal"), "gopkg.in/yaml");
    }
}
