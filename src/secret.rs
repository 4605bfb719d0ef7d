//! A secret string (a broker or TURN password): `Debug` shows `<redacted>`, so a secret never
//! reaches a log through the structs that carry it, and there is no `Display` to print it by
//! accident. The text is read where it is needed, as `&str` (`Deref`).

use std::fmt;
use std::ops::Deref;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Secret {
        Secret(text)
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Secret {
        Secret(text.to_owned())
    }
}

impl Deref for Secret {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_text_and_deref_gives_it() {
        let secret = Secret::new("hunter2");
        assert_eq!(
            format!("{secret:?} {:?}", Some(&secret)),
            "<redacted> Some(<redacted>)"
        );
        assert_eq!(&*secret, "hunter2");
        assert_eq!(Some(secret).as_deref(), Some("hunter2"));
    }
}
