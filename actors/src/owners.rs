//! Owners given by name (`User: app`, `dso.secret.X.uid=app`): resolved from the container's own
//! `/etc/passwd` and `/etc/group`, never the host's, so files belong to the user the application
//! runs as.
//!
//! A name stays a name in the spec ([`OwnerNames`] on each [`SecretFile`]) and in the keyed
//! digest; it is turned into a number at write time, on the side that can read the container's
//! files: the direct writer reads both files through the container's root (confined like the write
//! itself) and calls [`resolve`]; the exec script looks the names up inside the container (same
//! exec, see `injector::exec`). A name that is not there refuses the container ([`UnknownName`]),
//! nothing written.

use crate::model::SecretFile;
pub use crate::model::{GroupName, OwnerNames};

/// Longest user or group name accepted (as `useradd`).
pub const MAX_NAME: usize = 32;

/// A user or group name that the container does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownName {
    /// Not in `/etc/passwd`.
    #[error("no user `{0}` in the container's /etc/passwd")]
    User(String),
    /// Not in `/etc/group`.
    #[error("no group `{0}` in the container's /etc/group")]
    Group(String),
}

/// A well-formed user or group name: `[A-Za-z_][A-Za-z0-9_.-]*`, at most [`MAX_NAME`] bytes, not
/// all digits (that is an id).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A numeric id or a name, as written in `User` or a `.uid`/`.gid` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    /// A number.
    Num(u32),
    /// A name (see [`valid_name`]).
    Name(String),
}

impl Id {
    /// Parses a number or a name; None when it is neither.
    pub fn parse(s: &str) -> Option<Id> {
        let s = s.trim();
        match s.parse::<u32>() {
            Ok(n) => Some(Id::Num(n)),
            Err(_) if valid_name(s) => Some(Id::Name(s.to_string())),
            Err(_) => None,
        }
    }
}

/// The account files of one container, looked up by name: the first well-formed entry of a name
/// wins (as `getpwnam`); malformed lines (and ids that are not plain decimal below `u32::MAX`,
/// which `chown` would take as "unchanged") are skipped. Lookups scan the text; nothing is split
/// into per-line allocations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    passwd: String,
    group: String,
}

/// A uid/gid field: plain decimal digits, at most 10, below `u32::MAX` (-1 means "no change").
fn id_field(f: &str) -> Option<u32> {
    if f.is_empty() || f.len() > 10 || !f.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    f.parse().ok().filter(|&n| n != u32::MAX)
}

/// Fields 2 and 3 (0-based) of the first well-formed entry named `name`.
fn lookup(text: &str, name: &str, want_fourth: bool) -> Option<(u32, Option<u32>)> {
    text.lines().find_map(|line| {
        let mut f = line.splitn(5, ':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        let third = id_field(f.next()?)?;
        let fourth = if want_fourth {
            Some(id_field(f.next()?)?)
        } else {
            None
        };
        Some((third, fourth))
    })
}

impl Accounts {
    /// Takes the contents of `/etc/passwd` and `/etc/group` (either may be empty).
    pub fn parse(passwd: &[u8], group: &[u8]) -> Self {
        Self {
            passwd: String::from_utf8_lossy(passwd).into_owned(),
            group: String::from_utf8_lossy(group).into_owned(),
        }
    }

    fn user(&self, name: &str) -> Result<(u32, u32), UnknownName> {
        match lookup(&self.passwd, name, true) {
            Some((uid, Some(gid))) => Ok((uid, gid)),
            _ => Err(UnknownName::User(name.to_string())),
        }
    }

    fn group(&self, name: &str) -> Result<u32, UnknownName> {
        lookup(&self.group, name, false)
            .map(|(gid, _)| gid)
            .ok_or_else(|| UnknownName::Group(name.to_string()))
    }
}

/// True when any file's owner is given by name (the writer must read the account files).
pub fn any_named(files: &[&SecretFile]) -> bool {
    files.iter().any(|f| !f.names.is_empty())
}

/// `files` with every named owner replaced by its number from `accounts`; the first unknown name
/// is the error.
pub fn resolve(files: &[&SecretFile], accounts: &Accounts) -> Result<Vec<SecretFile>, UnknownName> {
    files
        .iter()
        .map(|f| {
            let mut f = (*f).clone();
            if let Some(user) = f.names.user.take() {
                f.uid = accounts.user(&user)?.0;
            }
            match f.names.group.take() {
                Some(GroupName::Group(g)) => f.gid = accounts.group(&g)?,
                Some(GroupName::PrimaryOf(u)) => f.gid = accounts.user(&u)?.1,
                None => {}
            }
            Ok(f)
        })
        .collect()
}

/// How the exec script receives a file's owner: a number, `u:NAME` (a user's uid), `g:NAME` (a
/// group's gid) or `p:NAME` (a user's primary gid). Names are [`valid_name`]s: no `:` and nothing
/// a shell would expand.
pub fn script_owner(f: &SecretFile) -> (String, String) {
    let uid = match &f.names.user {
        Some(u) => format!("u:{u}"),
        None => f.uid.to_string(),
    };
    let gid = match &f.names.group {
        Some(GroupName::Group(g)) => format!("g:{g}"),
        Some(GroupName::PrimaryOf(u)) => format!("p:{u}"),
        None => f.gid.to_string(),
    };
    (uid, gid)
}

/// The unknown name the exec script reported on its output (`dso-unknown-owner:u:NAME`), if it is
/// one of the names DSO asked for (the output comes from the container: nothing else is quoted).
pub fn unknown_from_script(output: &str, files: &[SecretFile]) -> Option<UnknownName> {
    output.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(UNKNOWN_MARKER)?;
        let (kind, name) = rest.split_once(':')?;
        files.iter().find_map(|f| {
            let (u, g) = script_owner(f);
            if u == format!("{kind}:{name}") || g == format!("{kind}:{name}") {
                Some(match kind {
                    "g" => UnknownName::Group(name.to_string()),
                    _ => UnknownName::User(name.to_string()),
                })
            } else {
                None
            }
        })
    })
}

/// What the exec script prints before `u:NAME`/`g:NAME`/`p:NAME` when a name is unknown.
pub const UNKNOWN_MARKER: &str = "dso-unknown-owner:";

/// Default owner from the container's `User`: numeric `U` or `U:G` (without `G`, the gid is
/// `U`), else root. Names count as root here; [`owner_of_user`] keeps them.
pub fn default_owner(user: &str) -> (u32, u32) {
    match owner_of_user(user) {
        Some(Owner {
            uid: Id::Num(u),
            gid,
        }) => match gid {
            OwnerGid::Id(Id::Num(g)) => (u, g),
            _ => (u, u),
        },
        _ => (0, 0),
    }
}

/// The gid side of an owner before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerGid {
    /// A number or a group name.
    Id(Id),
    /// The named user's primary group (`User: app` without a group).
    PrimaryOf(String),
}

/// A file owner as written (numbers or names), before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Uid or user name.
    pub uid: Id,
    /// Gid, group name, or a user's primary group.
    pub gid: OwnerGid,
}

/// The container's `User` (`""`, `U`, `U:G`, each a number or a name) as an owner; None when it
/// is malformed. Empty is root; `app` alone means app's primary group (as Docker does); a numeric
/// `U` alone keeps the gid `U` (DSO's behaviour before names).
pub fn owner_of_user(user: &str) -> Option<Owner> {
    let user = user.trim();
    if user.is_empty() {
        return Some(Owner {
            uid: Id::Num(0),
            gid: OwnerGid::Id(Id::Num(0)),
        });
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid = Id::parse(u)?;
    let gid = match (g, &uid) {
        (Some(g), _) => OwnerGid::Id(Id::parse(g)?),
        (None, Id::Num(n)) => OwnerGid::Id(Id::Num(*n)),
        (None, Id::Name(name)) => OwnerGid::PrimaryOf(name.clone()),
    };
    Some(Owner { uid, gid })
}

/// A file's (uid, gid, names) from its labels' ids over the default owner.
pub fn file_owner(uid: Option<&Id>, gid: Option<&Id>, default: &Owner) -> (u32, u32, OwnerNames) {
    let mut names = OwnerNames::default();
    let uid = match uid.unwrap_or(&default.uid) {
        Id::Num(n) => *n,
        Id::Name(name) => {
            names.user = Some(name.clone());
            0
        }
    };
    let gid = match gid
        .map(|g| OwnerGid::Id(g.clone()))
        .unwrap_or(default.gid.clone())
    {
        OwnerGid::Id(Id::Num(n)) => n,
        OwnerGid::Id(Id::Name(name)) => {
            names.group = Some(GroupName::Group(name));
            0
        }
        OwnerGid::PrimaryOf(name) => {
            names.group = Some(GroupName::PrimaryOf(name));
            0
        }
    };
    (uid, gid, names)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::test_file;

    const PASSWD: &[u8] =
        b"root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\napp:x:1000:1000::/home/app:/bin/sh\napp:x:7:7:dup\n";
    const GROUP: &[u8] = b"root:x:0:\nstaff:x:50:app\nbad:x:nan:\n";

    #[test]
    fn default_owner_of_a_user() {
        assert_eq!(default_owner(""), (0, 0));
        assert_eq!(default_owner("1000"), (1000, 1000));
        assert_eq!(default_owner("1000:50"), (1000, 50));
        assert_eq!(default_owner("app"), (0, 0));
    }

    #[test]
    fn names_resolve_from_the_containers_files() {
        let acc = Accounts::parse(PASSWD, GROUP);
        let mut a = test_file("a", 0o400);
        a.names.user = Some("app".into());
        a.names.group = Some(GroupName::PrimaryOf("app".into()));
        let mut b = test_file("b", 0o400);
        b.names.user = Some("app".into());
        b.names.group = Some(GroupName::Group("staff".into()));
        let c = test_file("c", 0o400);
        let out = resolve(&[&a, &b, &c], &acc).unwrap();
        assert_eq!(
            out.iter().map(|f| (f.uid, f.gid)).collect::<Vec<_>>(),
            [(1000, 1000), (1000, 50), (1000, 1001)]
        );
        assert!(out.iter().all(|f| f.names.is_empty()));
        let mut d = test_file("d", 0o400);
        d.names.user = Some("nobody".into());
        assert_eq!(
            resolve(&[&d], &acc).unwrap_err().to_string(),
            "no user `nobody` in the container's /etc/passwd"
        );
        d.names = OwnerNames {
            user: None,
            group: Some(GroupName::Group("bad".into())),
        };
        assert_eq!(resolve(&[&d], &acc), Err(UnknownName::Group("bad".into())));
        // -1 (`chown`'s "unchanged") and non-decimal ids are not ids: the name is unknown.
        let acc = Accounts::parse(
            b"max:x:4294967295:1::/:/bin/sh\nplus:x:+5:5::/:/bin/sh\nbig:x:12345678901:1::/:/\n",
            b"",
        );
        for name in ["max", "plus", "big"] {
            d.names = OwnerNames {
                user: Some(name.into()),
                group: None,
            };
            assert_eq!(resolve(&[&d], &acc), Err(UnknownName::User(name.into())));
        }
    }

    #[test]
    fn ids_and_names_parse_and_script_arguments_round_trip() {
        assert_eq!(Id::parse(" 1000 "), Some(Id::Num(1000)));
        assert_eq!(Id::parse("app"), Some(Id::Name("app".into())));
        assert_eq!(Id::parse("www-data"), Some(Id::Name("www-data".into())));
        for bad in ["", "-x", "a:b", "a b", "$(id)", "1a", &"a".repeat(33)] {
            assert_eq!(Id::parse(bad), None, "{bad}");
        }
        let mut f = test_file("f", 0o400);
        f.names.user = Some("app".into());
        f.names.group = Some(GroupName::Group("staff".into()));
        assert_eq!(script_owner(&f), ("u:app".into(), "g:staff".into()));
        assert_eq!(
            unknown_from_script("x\ndso-unknown-owner:g:staff\n", std::slice::from_ref(&f)),
            Some(UnknownName::Group("staff".into()))
        );
        // A name DSO did not ask for is not quoted.
        assert_eq!(
            unknown_from_script("dso-unknown-owner:u:evil\n", std::slice::from_ref(&f)),
            None
        );
    }
}
