//! Deterministic ~1 KB JSON documents shaped like those of the peer benchmarks' generator
//! (`gen_docs.py`), so that figures compare: a key, a type, a nested name and address, numbers,
//! tags, a 30-50 word description and a 3-6 entry history. Same fields, vocabulary and size
//! distribution, so the documents compress about as real ones do; the byte stream differs from
//! the Python generator's.

use std::fmt::Write;

const WORDS: &str = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river \
mountain valley forest ocean desert island harbor bridge tower castle garden market station \
village city county street avenue road lane square park museum library school college hospital \
factory office store bakery kitchen window door table chair lamp clock phone camera laptop \
screen keyboard printer paper pencil notebook letter message signal network server client \
cluster replica leader follower shard index query cursor document collection graph vertex edge \
tick journal segment record value red orange yellow green blue indigo violet black white silver \
golden bronze copper iron steel glass stone wooden plastic paper cotton silk wool leather rubber \
marble quick slow bright dark happy sad calm busy quiet loud early late young old new ancient \
north south east west central upper lower inner outer front back left right middle spring \
summer autumn winter morning evening night noon midnight today tomorrow coffee tea water juice \
bread cheese apple banana cherry grape lemon mango peach pear plum melon tomato potato carrot \
onion pepper garlic rice pasta pizza salad soup cake anna bruno carla dario elena fabio giulia \
hugo irene jonas karin luca maria nico olga paolo quinn rosa sven tina ugo vera walter xenia \
yuri zoe";
const CITIES: [&str; 16] = [
    "Berlin", "Cologne", "Munich", "Hamburg", "Paris", "Lyon", "Milan", "Rome", "Madrid", "Lisbon",
    "Vienna", "Prague", "Warsaw", "Oslo", "Dublin", "Zurich",
];
const COUNTRIES: [&str; 11] = [
    "DE", "FR", "IT", "ES", "PT", "AT", "CZ", "PL", "NO", "IE", "CH",
];
const TYPES: [&str; 5] = ["customer", "order", "invoice", "event", "session"];
const STREETS: [&str; 4] = ["Street", "Road", "Avenue", "Lane"];
const ACTIONS: [&str; 5] = ["login", "view", "buy", "logout", "update"];

/// A seeded generator of documents; the same seed gives the same documents.
pub struct DocGen {
    state: u64,
    words: Vec<&'static str>,
}

impl DocGen {
    pub fn new(seed: u64) -> DocGen {
        DocGen {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
            words: WORDS.split_whitespace().collect(),
        }
    }

    /// splitmix64
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, low: u64, high_inclusive: u64) -> u64 {
        low + self.below(high_inclusive - low + 1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn word(&mut self) -> &'static str {
        let i = self.below(self.words.len() as u64) as usize;
        self.words[i]
    }

    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[self.below(list.len() as u64) as usize]
    }

    fn capitalized(&mut self) -> String {
        let word = self.word();
        let mut out = word[..1].to_uppercase();
        out.push_str(&word[1..]);
        out
    }

    /// The key of document `i` with `prefix`, as gen_docs.py forms it.
    pub fn key(prefix: &str, i: u64) -> String {
        format!("{prefix}{i:09}")
    }

    /// The next document, with `_key` = `key` and `counter` = `i`.
    pub fn doc(&mut self, key: &str, i: u64) -> String {
        let mut d = String::with_capacity(1100);
        let kind = self.pick(&TYPES);
        let (first, last, last_suffix) = (self.capitalized(), self.capitalized(), self.word());
        let (mail_a, mail_b, mail_n, mail_c) =
            (self.word(), self.word(), self.range(1, 9999), self.word());
        let _ = write!(
            d,
            r#"{{"_key":"{key}","type":"{kind}","name":{{"first":"{first}","last":"{last}{last_suffix}"}},"email":"{mail_a}.{mail_b}{mail_n}@{mail_c}.example.com","age":{},"active":{},"balance":{:.2},"score":{},"created":"20{:02}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z","#,
            self.range(18, 95),
            self.unit() < 0.7,
            -1000.0 + self.unit() * 101_000.0,
            self.range(0, 1_000_000),
            self.range(10, 25),
            self.range(1, 12),
            self.range(1, 28),
            self.range(0, 23),
            self.range(0, 59),
            self.range(0, 59),
            self.range(0, 999),
        );
        let street = (self.capitalized(), self.pick(&STREETS), self.range(1, 300));
        let (city, zip, country) = (
            self.pick(&CITIES),
            self.range(1000, 99_999),
            self.pick(&COUNTRIES),
        );
        let (lat, lon) = (-90.0 + self.unit() * 180.0, -180.0 + self.unit() * 360.0);
        let _ = write!(
            d,
            r#""address":{{"street":"{} {} {}","city":"{city}","zip":"{zip:05}","country":"{country}","geo":[{lat:.6},{lon:.6}]}},"tags":["#,
            street.0, street.1, street.2
        );
        for t in 0..self.range(3, 8) {
            let _ = write!(d, r#"{}"{}""#, if t == 0 { "" } else { "," }, self.word());
        }
        d.push_str(r#"],"description":""#);
        for w in 0..self.range(30, 50) {
            if w > 0 {
                d.push(' ');
            }
            d.push_str(self.word());
        }
        d.push_str(r#"","history":["#);
        for h in 0..self.range(3, 6) {
            let _ = write!(
                d,
                r#"{}{{"ts":{},"action":"{}","amount":{:.2},"ref":"{:08x}"}}"#,
                if h == 0 { "" } else { "," },
                self.range(1_500_000_000, 1_750_000_000),
                self.pick(&ACTIONS),
                self.unit() * 500.0,
                self.next() as u32,
            );
        }
        let _ = write!(d, r#"],"counter":{i}}}"#);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: documents are deterministic, about 1 KB on average, and keyed as asked.
    #[test]
    fn documents_are_about_one_kilobyte_and_deterministic() {
        let mut a = DocGen::new(7);
        let mut b = DocGen::new(7);
        let docs: Vec<String> = (0..1000).map(|i| a.doc(&DocGen::key("d", i), i)).collect();
        for (i, doc) in docs.iter().enumerate() {
            assert_eq!(*doc, b.doc(&DocGen::key("d", i as u64), i as u64));
        }
        let mean = docs.iter().map(String::len).sum::<usize>() / docs.len();
        assert!((850..=1150).contains(&mean), "mean document size {mean}");
        assert!(docs[3].starts_with(r#"{"_key":"d000000003","#));
        assert!(docs[3].ends_with(r#","counter":3}"#));
    }
}
