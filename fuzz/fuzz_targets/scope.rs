//! Scope and permission parsing (src/permissions.rs): the `scope` claim of every token, the
//! permissions a mint request asks for (shortcuts expanded against the catalogue), and the
//! identifiers beside them (tenant, subject, category).
//!
//! Properties: a parsed scope or permission prints to text that parses back to it; a scope
//! grants each permission it lists; an expansion holds only catalogued categories.

#![no_main]

use std::sync::OnceLock;

use edgetoken::permissions::{Catalogue, Category, Permission, Scope};
use edgetoken::token::{Subject, TenantId};
use edgetoken_fuzz::catalogue;
use libfuzzer_sys::fuzz_target;

fn shared_catalogue() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(catalogue)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(scope) = Scope::parse_claim(text) {
        let claim = scope.to_claim();
        assert_eq!(Scope::parse_claim(&claim).as_ref(), Ok(&scope), "{claim:?}");
        for permission in scope.iter() {
            assert!(scope.grants(permission));
        }
    }
    if let Ok(permission) = text.parse::<Permission>() {
        let printed = permission.to_string();
        assert_eq!(printed.parse::<Permission>().as_ref(), Ok(&permission));
    }
    let requested: Vec<&str> = text.split([' ', ',']).collect();
    if let Ok(scope) = shared_catalogue().expand(&requested) {
        for permission in scope.iter() {
            assert!(
                shared_catalogue()
                    .categories()
                    .any(|c| c == permission.category())
            );
        }
    }
    let _ = Category::new(text);
    let _ = TenantId::new(text);
    let _ = Subject::new(text);
});
