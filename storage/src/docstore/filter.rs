//! Which collections a follower replicates: ArangoDB's `restrictType`/`restrictCollections` and
//! `includeSystem` applier options.
//!
//! The store applies the filter by a collection's current name, record by record, as ArangoDB's
//! tailing syncer does: the creation of a collection that the filter leaves out is skipped (so
//! its documents, which name the collection by id, have nowhere to go and are skipped too), and
//! the records of a collection that exists here but whose name the filter leaves out (the filter
//! changed, or the collection was renamed) are skipped. Databases are always replicated.

use std::collections::HashSet;

/// `restrictType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restrict {
    /// Every collection (`""` / `"none"`).
    None,
    /// Only the named collections.
    Include,
    /// Every collection but the named ones.
    Exclude,
}

/// The collections a follower keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionFilter {
    restrict: Restrict,
    names: HashSet<String>,
    include_system: bool,
}

impl CollectionFilter {
    pub fn new(
        restrict: Restrict,
        names: impl IntoIterator<Item = String>,
        include_system: bool,
    ) -> CollectionFilter {
        CollectionFilter {
            restrict,
            names: names.into_iter().collect(),
            include_system,
        }
    }

    /// Whether this filter keeps every collection (then there is nothing to check).
    pub fn keeps_all(&self) -> bool {
        self.restrict == Restrict::None && self.include_system
    }

    /// Whether the collection called `name` is replicated.
    pub fn admits(&self, name: &str) -> bool {
        if !self.include_system && name.starts_with('_') {
            return false;
        }
        match self.restrict {
            Restrict::None => true,
            Restrict::Include => self.names.contains(name),
            Restrict::Exclude => !self.names.contains(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn include_keeps_only_the_named() {
        let filter = CollectionFilter::new(Restrict::Include, names(&["a", "_b"]), true);
        assert!(filter.admits("a") && filter.admits("_b"));
        assert!(!filter.admits("c") && !filter.admits("A"));
        assert!(!filter.keeps_all());
    }

    #[test]
    fn exclude_keeps_all_but_the_named() {
        let filter = CollectionFilter::new(Restrict::Exclude, names(&["a"]), true);
        assert!(!filter.admits("a"));
        assert!(filter.admits("b") && filter.admits("_system_like"));
    }

    #[test]
    fn include_system_false_leaves_out_system_collections_whatever_the_list() {
        let filter = CollectionFilter::new(Restrict::Include, names(&["_users", "a"]), false);
        assert!(!filter.admits("_users"));
        assert!(filter.admits("a"));
        let all = CollectionFilter::new(Restrict::None, [], false);
        assert!(!all.keeps_all() && !all.admits("_x") && all.admits("x"));
        assert!(CollectionFilter::new(Restrict::None, [], true).keeps_all());
    }
}
