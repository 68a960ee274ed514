//! Which collections a follower replicates: ArangoDB's `restrictType`/`restrictCollections` and
//! `includeSystem` applier options, with the other per-record policies of the applier:
//! `includeFoxxQueues`, `skipCreateDrop` and `verbose`.
//!
//! The store applies the filter by a collection's current name, record by record, as ArangoDB's
//! tailing syncer does: the creation of a collection that the filter leaves out is skipped (so
//! its documents, which name the collection by id, have nowhere to go and are skipped too), and
//! the records of a collection that exists here but whose name the filter leaves out (the filter
//! changed, or the collection was renamed) are skipped.
//!
//! A [`StoreFilter`] applies one such filter to every database (the server-level applier), or
//! keeps only some databases, each with a filter of its own (per-database appliers). A database
//! it keeps may have a floor: its records up to that tick are already in the store (it was
//! synced at that tick) and are skipped.

use std::collections::{BTreeMap, HashSet};

use crate::tick::Tick;

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

/// The system collections of Foxx's job queues, replicated only with `includeFoxxQueues`.
const FOXX_QUEUES: [&str; 2] = ["_jobs", "_queues"];

/// The collections a follower keeps, and how it treats their records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionFilter {
    restrict: Restrict,
    names: HashSet<String>,
    include_system: bool,
    include_foxx_queues: bool,
    /// Collection create, drop and rename records are left out (counted as excluded).
    pub skip_create_drop: bool,
    /// Every applied record is logged at info.
    pub verbose: bool,
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
            include_foxx_queues: true,
            skip_create_drop: false,
            verbose: false,
        }
    }

    /// `_jobs` and `_queues` kept (`includeFoxxQueues`), or left out like ArangoDB's default.
    pub fn with_foxx_queues(mut self, include: bool) -> CollectionFilter {
        self.include_foxx_queues = include;
        self
    }

    /// Whether this filter keeps every collection and every record as it is (then there is
    /// nothing to check).
    pub fn keeps_all(&self) -> bool {
        self.restrict == Restrict::None
            && self.include_system
            && self.include_foxx_queues
            && !self.skip_create_drop
            && !self.verbose
    }

    /// Whether the collection called `name` is replicated.
    pub fn admits(&self, name: &str) -> bool {
        if !self.include_system && name.starts_with('_') {
            return false;
        }
        if !self.include_foxx_queues && FOXX_QUEUES.contains(&name) {
            return false;
        }
        match self.restrict {
            Restrict::None => true,
            Restrict::Include => self.names.contains(name),
            Restrict::Exclude => !self.names.contains(name),
        }
    }
}

/// What a follower's store applies of its leader's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreFilter {
    /// Every database, under one filter.
    All(CollectionFilter),
    /// Only these databases, each under its own rule.
    Databases(BTreeMap<String, DatabaseRule>),
}

/// How one replicated database is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseRule {
    pub collections: CollectionFilter,
    /// Records of the database up to this tick are skipped: the store holds its state there.
    pub floor: Tick,
}

impl StoreFilter {
    /// The filter for the records of database `db`, or `None` if they are left out.
    pub fn rule(&self, db: &str) -> Option<&CollectionFilter> {
        match self {
            StoreFilter::All(filter) => Some(filter),
            StoreFilter::Databases(rules) => rules.get(db).map(|r| &r.collections),
        }
    }

    /// Whether the collection `name` of database `db` is replicated.
    pub fn admits(&self, db: &str, name: &str) -> bool {
        self.rule(db).is_some_and(|f| f.admits(name))
    }

    /// Whether the record of database `db` at `tick` is below that database's floor.
    pub fn below_floor(&self, db: &str, tick: Tick) -> bool {
        match self {
            StoreFilter::All(_) => false,
            StoreFilter::Databases(rules) => rules.get(db).is_some_and(|r| tick <= r.floor),
        }
    }

    /// Whether every record is applied as it is (then there is nothing to check).
    pub fn keeps_all(&self) -> bool {
        matches!(self, StoreFilter::All(filter) if filter.keeps_all())
    }

    /// Whether any database's records are logged as they are applied.
    pub fn verbose(&self, db: &str) -> bool {
        self.rule(db).is_some_and(|f| f.verbose)
    }

    /// Whether the collection create, drop and rename records of database `db` are left out.
    pub fn skips_create_drop(&self, db: &str) -> bool {
        self.rule(db).is_some_and(|f| f.skip_create_drop)
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

    #[test]
    fn databases_keep_only_theirs_each_with_its_rule_and_floor() {
        let mut rules = BTreeMap::new();
        rules.insert(
            "a".to_string(),
            DatabaseRule {
                collections: CollectionFilter::new(Restrict::Include, names(&["x"]), true),
                floor: Tick::new(10),
            },
        );
        rules.insert(
            "b".to_string(),
            DatabaseRule {
                collections: CollectionFilter::new(Restrict::None, [], true),
                floor: Tick::ZERO,
            },
        );
        let filter = StoreFilter::Databases(rules);
        assert!(filter.admits("a", "x") && !filter.admits("a", "y"));
        assert!(filter.admits("b", "y") && !filter.admits("c", "x"));
        assert!(filter.below_floor("a", Tick::new(10)) && !filter.below_floor("a", Tick::new(11)));
        assert!(!filter.below_floor("b", Tick::new(1)) && !filter.keeps_all());
        let all = StoreFilter::All(CollectionFilter::new(Restrict::None, [], true));
        assert!(all.keeps_all() && all.admits("c", "x") && !all.below_floor("c", Tick::new(1)));
    }

    #[test]
    fn foxx_queues_only_with_include_foxx_queues() {
        let filter = CollectionFilter::new(Restrict::None, [], true).with_foxx_queues(false);
        assert!(!filter.admits("_jobs") && !filter.admits("_queues"));
        assert!(filter.admits("_users") && filter.admits("jobs") && !filter.keeps_all());
        let filter = filter.with_foxx_queues(true);
        assert!(filter.admits("_jobs") && filter.keeps_all());
        // An explicit include list does not bring them back without the option.
        let filter = CollectionFilter::new(Restrict::Include, names(&["_jobs"]), true)
            .with_foxx_queues(false);
        assert!(!filter.admits("_jobs"));
    }
}
