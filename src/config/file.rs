//! The config file (`--config FILE`): TOML whose keys are the daemon's long flag names, read by
//! serde into the same [`DaemonOptions`] the flags fill, through the same kinds of values. Every
//! error names the file, and the key or the line.

use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::ConfigError;
use super::args::DaemonOptions;

/// What a config file says.
#[derive(Debug)]
pub(super) struct FileValues {
    /// The options the file sets; the others hold `Default` values until
    /// [`super::resolve`] merges the flags and their defaults over them.
    pub options: DaemonOptions,
    /// The keys the file has.
    pub keys: Vec<String>,
}

/// The config file's keys: the daemon's long option names, in the order of [`DaemonOptions`].
pub fn file_keys() -> &'static [&'static str] {
    struct_fields::<DaemonOptions>()
}

pub(super) fn read(path: &Path) -> Result<FileValues, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::FileRead {
        path: path.to_owned(),
        err,
    })?;
    parse(path, &text)
}

pub(super) fn parse(path: &Path, text: &str) -> Result<FileValues, ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let offset = e.span().map_or(0, |span| span.start).min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError::FileSyntax {
            path: path.to_owned(),
            line,
            column,
            message: e.message().trim().replace('\n', "; "),
        }
    })?;
    if let Some(key) = table
        .keys()
        .find(|key| !file_keys().contains(&key.as_str()))
    {
        return Err(ConfigError::UnknownKey {
            path: path.to_owned(),
            key: key.clone(),
        });
    }
    let keys = table.keys().cloned().collect();
    // From the text again, not from `table`: a `toml::Value` hands its dates on as strings.
    let options = serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let key = match e.path().iter().next() {
            Some(serde_path_to_error::Segment::Map { key }) => key.clone(),
            _ => e.path().to_string(),
        };
        ConfigError::FileValue {
            path: path.to_owned(),
            key,
            message: e.into_inner().message().to_owned(),
        }
    })?;
    Ok(FileValues { options, keys })
}

/// The field names of a struct's derived `Deserialize` (after renaming), read by asking it to
/// deserialize from a deserializer that only notes them.
fn struct_fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields(&'static [&'static str]);

    impl<'de> Deserializer<'de> for &mut Fields {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only a struct's field names are read"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            self.deserialize_any(visitor)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut fields = Fields(&[]);
    let _ = T::deserialize(&mut fields);
    fields.0
}
