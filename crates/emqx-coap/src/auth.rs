//! The authentication file: users with password hashes and ACL rules.
//!
//! ```toml
//! [[users]]
//! username = "alice"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."   # or bcrypt "$2b$12$..."
//!
//! [[acl]]
//! permission = "allow"              # allow | deny
//! action = "publish"                # publish | subscribe | all
//! topic = "devices/${clientid}/#"   # filter; ${clientid} / ${username}
//! username = "alice"                # optional: rule only for this user
//! clientid = "dev-1"                # optional: rule only for this client
//! ```
//!
//! - Plain-text passwords are refused when the file is loaded (a `password`
//!   key, or a `password_hash` that is not an argon2 PHC string or a bcrypt
//!   hash), with an error naming the file, the line and the user.
//! - ACL rules are checked in file order, the first rule that applies
//!   decides; when none applies the answer is deny.
//! - A topic starting with `eq ` is compared literally (`eq a/#` matches
//!   only the topic or filter `a/#`), as in EMQX.
//! - A rule whose placeholder cannot be filled (no client id / username, or
//!   a value containing `/`, `+`, `#`) does not apply.
//! - **(beyond EMQX)** A `deny` rule on `subscribe` applies to every filter
//!   that *overlaps* the rule's filter (a deny on `a/secret` also refuses a
//!   subscription to `a/+`); an `allow` rule applies to filters it fully
//!   covers.
//!
//! Verifying a password hash is deliberately slow (argon2: tens of ms and
//! the hash's memory cost): call [`AuthFile::authenticate`] from a blocking
//! context (`tokio::task::spawn_blocking`) and bound how many run at once.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash as _, Hasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use serde::Deserialize;
use toml::Spanned;

use crate::mountpoint::Mountpoint;
use crate::topic::{filter_covers, matches, validate_topic_filter};

/// What a client wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Publish to a topic name.
    Publish,
    /// Subscribe to a topic filter.
    Subscribe,
}

/// Who is asking (for placeholders and rule selectors).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requester<'a> {
    /// Client id, if known.
    pub clientid: Option<&'a str>,
    /// Authenticated username, if any.
    pub username: Option<&'a str>,
}

/// Why authentication failed (both map to CoAP 4.01; tell them apart only
/// in logs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No such user.
    #[error("authentication failed: unknown user")]
    UnknownUser,
    /// Wrong password.
    #[error("authentication failed: wrong password")]
    BadPassword,
}

/// Why the file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax or an unexpected key / value type.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 if unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is not acceptable (plain-text password, bad filter, ...).
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The key, with its table (`users[2].password_hash`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A loaded authentication file.
#[derive(Debug, Clone)]
pub struct AuthFile {
    users: Vec<User>,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct User {
    username: String,
    hash: Hash,
}

#[derive(Debug, Clone)]
enum Hash {
    Argon2(String),
    Bcrypt(String),
}

#[derive(Debug, Clone)]
struct Rule {
    allow: bool,
    publish: bool,
    subscribe: bool,
    topic: RuleTopic,
    username: Option<String>,
    clientid: Option<String>,
}

#[derive(Debug, Clone)]
enum RuleTopic {
    /// Compared literally.
    Exact(String),
    /// A filter template with placeholders.
    Filter(Mountpoint),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    users: Vec<UserToml>,
    #[serde(default)]
    acl: Vec<RuleToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserToml {
    username: Spanned<String>,
    password_hash: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    permission: Spanned<String>,
    action: Spanned<String>,
    topic: Spanned<String>,
    username: Option<String>,
    clientid: Option<String>,
}

impl AuthFile {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks `text` as the content of the file `path` (used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, AuthFileError> {
        let file: FileToml = toml::from_str(text).map_err(|e| AuthFileError::Syntax {
            path: path.to_owned(),
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            message: e.message().to_owned(),
        })?;
        let invalid =
            |span: std::ops::Range<usize>, key: String, message: String| AuthFileError::Invalid {
                path: path.to_owned(),
                line: line_of(text, span.start),
                key,
                message,
            };
        let mut users: Vec<User> = Vec::with_capacity(file.users.len());
        for (i, u) in file.users.into_iter().enumerate() {
            let name = u.username.get_ref().clone();
            if let Some(p) = &u.password {
                return Err(invalid(
                    p.span(),
                    format!("users[{i}].password"),
                    format!(
                        "user {name:?}: plain-text passwords are refused; put an argon2 or bcrypt hash in password_hash"
                    ),
                ));
            }
            let Some(h) = u.password_hash else {
                return Err(invalid(
                    u.username.span(),
                    format!("users[{i}].password_hash"),
                    format!("user {name:?} has no password_hash"),
                ));
            };
            let hash = parse_hash(h.get_ref()).map_err(|why| {
                invalid(
                    h.span(),
                    format!("users[{i}].password_hash"),
                    format!("user {name:?}: {why}"),
                )
            })?;
            if users.iter().any(|existing| existing.username == name) {
                return Err(invalid(
                    u.username.span(),
                    format!("users[{i}].username"),
                    format!("user {name:?} is defined twice"),
                ));
            }
            users.push(User {
                username: name,
                hash,
            });
        }
        let mut rules = Vec::with_capacity(file.acl.len());
        for (i, r) in file.acl.into_iter().enumerate() {
            let allow = match r.permission.get_ref().as_str() {
                "allow" => true,
                "deny" => false,
                other => {
                    return Err(invalid(
                        r.permission.span(),
                        format!("acl[{i}].permission"),
                        format!("{other:?} is not allow or deny"),
                    ));
                }
            };
            let (publish, subscribe) = match r.action.get_ref().as_str() {
                "publish" => (true, false),
                "subscribe" => (false, true),
                "all" => (true, true),
                other => {
                    return Err(invalid(
                        r.action.span(),
                        format!("acl[{i}].action"),
                        format!("{other:?} is not publish, subscribe or all"),
                    ));
                }
            };
            let raw = r.topic.get_ref();
            let topic = if let Some(exact) = raw.strip_prefix("eq ") {
                RuleTopic::Exact(exact.to_owned())
            } else {
                // Check the shape with placeholders filled by a harmless value.
                let probe = raw.replace("${clientid}", "x").replace("${username}", "x");
                validate_topic_filter(&probe).map_err(|e| {
                    invalid(
                        r.topic.span(),
                        format!("acl[{i}].topic"),
                        format!("{raw:?}: {e}"),
                    )
                })?;
                RuleTopic::Filter(Mountpoint::new(raw.clone()))
            };
            rules.push(Rule {
                allow,
                publish,
                subscribe,
                topic,
                username: r.username,
                clientid: r.clientid,
            });
        }
        Ok(Self { users, rules })
    }

    /// Number of users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Checks a username and password. Slow by design (see module doc).
    pub fn authenticate(&self, username: &str, password: &str) -> Result<(), AuthError> {
        match self.users.iter().find(|u| u.username == username) {
            Some(user) => {
                if user.hash.verify(password) {
                    Ok(())
                } else {
                    Err(AuthError::BadPassword)
                }
            }
            None => {
                // Spend the same time as for a known user, so response
                // timing does not tell which usernames exist.
                if let Some(any) = self.users.first() {
                    let _ = any.hash.verify(password);
                }
                Err(AuthError::UnknownUser)
            }
        }
    }

    /// True if the first ACL rule that applies allows `action` on `topic`
    /// (a topic name for publish, a filter for subscribe); false if a rule
    /// denies it or none applies.
    pub fn authorize(&self, who: Requester<'_>, action: Action, topic: &str) -> bool {
        for rule in &self.rules {
            if let Some(decision) = rule.decide(who, action, topic) {
                return decision;
            }
        }
        false
    }
}

/// Remembers recent successful authentications for a while, so that
/// connectionless mode (which authenticates every request) pays for a
/// password hash once per `ttl` and client instead of once per request.
///
/// Only a 64-bit keyed hash of (username, password) is kept, with a random
/// per-process key; failures are never cached. Opt-in: it trades the
/// slowness of the stored hashes against memory exposure of the process.
/// Use a new cache whenever the file is reloaded.
#[derive(Debug)]
pub struct AuthCache {
    entries: Mutex<HashMap<u64, Instant>>,
    keys: RandomState,
    capacity: usize,
    ttl: Duration,
}

impl AuthCache {
    /// A cache of at most `capacity` entries, each valid for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            keys: RandomState::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// [`AuthFile::authenticate`] through the cache, at time `now`.
    pub fn authenticate_at(
        &self,
        file: &AuthFile,
        username: &str,
        password: &str,
        now: Instant,
    ) -> Result<(), AuthError> {
        let mut h = self.keys.build_hasher();
        username.hash(&mut h);
        password.hash(&mut h);
        let key = h.finish();
        let cached = {
            let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            entries.get(&key).is_some_and(|until| *until > now)
        };
        if cached {
            return Ok(());
        }
        // The slow part runs without holding the lock.
        file.authenticate(username, password)?;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity {
            entries.retain(|_, until| *until > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        if let Some(until) = now.checked_add(self.ttl) {
            entries.insert(key, until);
        }
        Ok(())
    }

    /// Number of remembered authentications.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True if nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Rule {
    /// `Some(allow)` if the rule applies.
    fn decide(&self, who: Requester<'_>, action: Action, topic: &str) -> Option<bool> {
        let wanted = match action {
            Action::Publish => self.publish,
            Action::Subscribe => self.subscribe,
        };
        if !wanted {
            return None;
        }
        if self
            .username
            .as_deref()
            .is_some_and(|u| who.username != Some(u))
        {
            return None;
        }
        if self
            .clientid
            .as_deref()
            .is_some_and(|c| who.clientid != Some(c))
        {
            return None;
        }
        let applies = match &self.topic {
            RuleTopic::Exact(exact) => exact == topic,
            RuleTopic::Filter(template) => {
                let filter = template.prefix(who.clientid, who.username).ok()?;
                match (action, self.allow) {
                    (Action::Publish, _) => matches(&filter, topic),
                    (Action::Subscribe, true) => filter_covers(&filter, topic),
                    (Action::Subscribe, false) => filters_overlap(&filter, topic),
                }
            }
        };
        applies.then_some(self.allow)
    }
}

impl Hash {
    fn verify(&self, password: &str) -> bool {
        match self {
            Self::Argon2(phc) => PasswordHash::new(phc).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            }),
            Self::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        }
    }
}

fn parse_hash(s: &str) -> Result<Hash, String> {
    if s.starts_with("$argon2") {
        PasswordHash::new(s).map_err(|e| format!("not a valid argon2 PHC string: {e}"))?;
        return Ok(Hash::Argon2(s.to_owned()));
    }
    if ["$2a$", "$2b$", "$2y$", "$2x$"]
        .iter()
        .any(|p| s.starts_with(p))
    {
        // "$2b$" + 2-digit cost + "$" + 53 characters of salt and hash.
        let cost_ok = s
            .get(4..6)
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| (4..=31).contains(&c));
        if s.len() != 60 || !cost_ok || s.get(6..7) != Some("$") {
            return Err("not a valid bcrypt hash (expected 60 characters like $2b$12$...)".into());
        }
        return Ok(Hash::Bcrypt(s.to_owned()));
    }
    Err(
        "not an argon2 ($argon2id$...) or bcrypt ($2b$...) hash; plain-text passwords are refused"
            .into(),
    )
}

/// True if some topic is matched by both filters.
fn filters_overlap(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(l), Some(r)) if l == "+" || r == "+" || l == r => {}
            _ => return false,
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use argon2::{Algorithm, Params, PasswordHasher, Version};

    use super::*;

    fn argon2_hash(password: &str) -> String {
        // Low cost keeps debug-build tests fast; verification uses the
        // parameters stored in the hash.
        let params = Params::new(256, 1, 1, None).unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes())
            .unwrap()
            .to_string()
    }

    fn file(extra: &str) -> AuthFile {
        let text = format!(
            "[[users]]\nusername = \"alice\"\npassword_hash = \"{}\"\n\n[[users]]\nusername = \"bob\"\npassword_hash = \"{}\"\n{extra}",
            argon2_hash("wonderland"),
            bcrypt::hash("builder", 4).unwrap()
        );
        AuthFile::parse(&text, Path::new("auth.toml")).unwrap()
    }

    #[test]
    fn verifies_argon2_and_bcrypt() {
        let f = file("");
        assert_eq!(f.user_count(), 2);
        assert_eq!(f.authenticate("alice", "wonderland"), Ok(()));
        assert_eq!(
            f.authenticate("alice", "wrong"),
            Err(AuthError::BadPassword)
        );
        assert_eq!(f.authenticate("bob", "builder"), Ok(()));
        assert_eq!(
            f.authenticate("bob", "wonderland"),
            Err(AuthError::BadPassword)
        );
        assert_eq!(
            f.authenticate("carol", "wonderland"),
            Err(AuthError::UnknownUser)
        );
    }

    #[test]
    fn plain_text_is_refused_with_file_line_and_user() {
        let text = "[[users]]\nusername = \"alice\"\npassword_hash = \"secret\"\n";
        let err = AuthFile::parse(text, Path::new("/etc/gw/auth.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/gw/auth.toml:3: users[0].password_hash: user \"alice\""),
            "{err}"
        );
        assert!(err.contains("plain-text passwords are refused"), "{err}");

        let text = "\n[[users]]\nusername = \"eve\"\npassword = \"secret\"\n";
        let err = AuthFile::parse(text, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("a.toml:4: users[0].password: user \"eve\": plain-text"),
            "{err}"
        );
    }

    #[test]
    fn load_errors_name_file_and_line() {
        let err = AuthFile::parse("[[users]]\nusername = 1\n", Path::new("x.toml")).unwrap_err();
        assert!(
            matches!(err, AuthFileError::Syntax { line: 2, .. }),
            "{err}"
        );
        let err = AuthFile::parse(
            "[[acl]]\npermission = \"allow\"\naction = \"publish\"\ntopic = \"a/#/b\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("x.toml:4: acl[0].topic:"), "{err}");
        let err = AuthFile::parse(
            "[[acl]]\npermission = \"maybe\"\naction = \"publish\"\ntopic = \"a\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("x.toml:2: acl[0].permission:"), "{err}");
        let err = AuthFile::parse("typo = 1\n", Path::new("x.toml")).unwrap_err();
        assert!(
            matches!(err, AuthFileError::Syntax { line: 1, .. }),
            "{err}"
        );
        let err = AuthFile::parse(
            "[[users]]\nusername = \"a\"\npassword_hash = \"$argon2id$garbage\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a valid argon2"), "{err}");
        let err = AuthFile::load(Path::new("/nonexistent/auth.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/nonexistent/auth.toml: "), "{err}");
    }

    #[test]
    fn acl_first_match_wins_and_default_denies() {
        let f = file(
            r#"
[[acl]]
permission = "deny"
action = "all"
topic = "devices/${clientid}/secret"

[[acl]]
permission = "allow"
action = "all"
topic = "devices/${clientid}/#"

[[acl]]
permission = "allow"
action = "subscribe"
topic = "broadcast/#"
username = "alice"

[[acl]]
permission = "allow"
action = "publish"
topic = "eq literal/#"
"#,
        );
        let dev1 = Requester {
            clientid: Some("dev1"),
            username: Some("alice"),
        };
        let anon = Requester::default();
        assert!(f.authorize(dev1, Action::Publish, "devices/dev1/temp"));
        assert!(f.authorize(dev1, Action::Subscribe, "devices/dev1/temp/+"));
        assert!(
            !f.authorize(dev1, Action::Subscribe, "devices/dev1/+"),
            "overlaps the denied topic"
        );
        assert!(
            !f.authorize(dev1, Action::Publish, "devices/dev1/secret"),
            "earlier deny wins"
        );
        assert!(
            !f.authorize(dev1, Action::Subscribe, "devices/dev1/#"),
            "overlaps the denied topic"
        );
        assert!(
            !f.authorize(dev1, Action::Publish, "devices/dev2/temp"),
            "placeholder binds own id"
        );
        assert!(
            !f.authorize(anon, Action::Publish, "devices/dev1/temp"),
            "no clientid: rule skipped"
        );
        assert!(f.authorize(dev1, Action::Subscribe, "broadcast/x"));
        assert!(
            !f.authorize(dev1, Action::Publish, "broadcast/x"),
            "action mismatch"
        );
        let bob = Requester {
            clientid: Some("c"),
            username: Some("bob"),
        };
        assert!(
            !f.authorize(bob, Action::Subscribe, "broadcast/x"),
            "rule only for alice"
        );
        assert!(f.authorize(bob, Action::Publish, "literal/#"));
        assert!(
            !f.authorize(bob, Action::Publish, "literal/x"),
            "eq is literal"
        );
        assert!(
            !f.authorize(bob, Action::Publish, "elsewhere"),
            "default deny"
        );
        // A client id with '/' cannot widen its own rule.
        let sneaky = Requester {
            clientid: Some("dev1/secret"),
            username: None,
        };
        assert!(!f.authorize(sneaky, Action::Publish, "devices/dev1/secret/x"));
    }

    #[test]
    fn cache_remembers_successes_only_and_expires() {
        let f = file("");
        let cache = AuthCache::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(
            cache.authenticate_at(&f, "alice", "wrong", t0),
            Err(AuthError::BadPassword)
        );
        assert!(cache.is_empty(), "failures are not cached");
        assert_eq!(cache.authenticate_at(&f, "alice", "wonderland", t0), Ok(()));
        assert_eq!(cache.len(), 1);
        // A cached success is answered without the file: prove it with a
        // file that no longer has the user.
        let empty = AuthFile::parse("", Path::new("empty.toml")).unwrap();
        assert_eq!(
            cache.authenticate_at(&empty, "alice", "wonderland", t0),
            Ok(())
        );
        assert_eq!(
            cache.authenticate_at(&empty, "alice", "wonderland", t0 + Duration::from_secs(61)),
            Err(AuthError::UnknownUser),
            "expired"
        );
        // Username and password are hashed separately: ("alicew", "onderland") differs.
        assert_eq!(
            cache.authenticate_at(&empty, "alicew", "onderland", t0),
            Err(AuthError::UnknownUser)
        );
        // Bounded.
        cache.authenticate_at(&f, "bob", "builder", t0).unwrap();
        cache
            .authenticate_at(&f, "alice", "wonderland", t0 + Duration::from_secs(1))
            .unwrap();
        assert!(cache.len() <= 2);
    }

    #[test]
    fn overlap() {
        assert!(filters_overlap("a/b", "a/+"));
        assert!(filters_overlap("a/#", "+/b/c"));
        assert!(!filters_overlap("a/b", "a/c"));
        assert!(!filters_overlap("a/b", "a/b/c"));
        assert!(filters_overlap("a/b", "a/b/#"));
    }
}
