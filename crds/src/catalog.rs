//! What a topology binary declares about its components.
//!
//! Output fields are declared in code, as in Storm's `declareOutputFields`, so the
//! manifest alone cannot tell whether `fields: [word]` is valid. The binary builds a
//! [`ComponentCatalog`] from its registry and [`crate::validate`] checks a manifest
//! against it. The catalog is plain data so that a worker can also publish it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::topology::ComponentKind;

/// The output declaration of one component: stream name → field names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ComponentDecl {
    pub kind: ComponentKind,
    pub outputs: BTreeMap<String, Vec<String>>,
}

/// Every component a topology binary can run, by registered name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ComponentCatalog {
    pub components: BTreeMap<String, ComponentDecl>,
}

impl ComponentCatalog {
    pub fn get(&self, name: &str) -> Option<&ComponentDecl> {
        self.components.get(name)
    }

    /// Registered names, sorted, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.components.keys().map(String::as_str).collect()
    }
}
