//! `key=value,key=value` lists, as every structured option takes them.
//!
//! Items are split on commas; `,,` stands for a literal comma inside a value (as in QEMU).
//! An item without `=` is a bare word: either the implied first value (`-smp 4`,
//! `-device virtio-blk-device,...`) or a flag (`server`, `nowait`). Every key must be
//! consumed by the option's parser; [`KvList::finish`] rejects what is left.

use super::error::{ConfigError, Result};

/// One item of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// `key=value`.
    Pair(String, String),
    /// A word without `=`.
    Bare(String),
}

/// A parsed `key=value` list, consumed key by key.
#[derive(Debug)]
pub(crate) struct KvList {
    option: String,
    items: Vec<Option<Item>>,
}

impl KvList {
    /// Splits `text`, the value of `option`.
    pub(crate) fn parse(option: &str, text: &str) -> Result<KvList> {
        let mut words = Vec::new();
        let mut current = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                ',' if chars.peek() == Some(&',') => {
                    chars.next();
                    current.push(',');
                }
                ',' => words.push(std::mem::take(&mut current)),
                c => current.push(c),
            }
        }
        words.push(current);
        if words.iter().any(String::is_empty) {
            return Err(ConfigError::EmptyItem {
                option: option.to_string(),
                text: text.to_string(),
            });
        }
        let items = words
            .into_iter()
            .map(|word| match word.split_once('=') {
                Some((key, value)) => Some(Item::Pair(key.to_string(), value.to_string())),
                None => Some(Item::Bare(word)),
            })
            .collect();
        let list = KvList {
            option: option.to_string(),
            items,
        };
        list.check_duplicates()?;
        Ok(list)
    }

    fn check_duplicates(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for item in self.items.iter().flatten() {
            let key = match item {
                Item::Pair(key, _) | Item::Bare(key) => key,
            };
            if !seen.insert(key) {
                return Err(ConfigError::DuplicateKey {
                    option: self.option.clone(),
                    key: key.clone(),
                });
            }
        }
        Ok(())
    }

    /// The option these items belong to.
    pub(crate) fn option(&self) -> &str {
        &self.option
    }

    /// Removes and returns the value of `key`.
    pub(crate) fn take(&mut self, key: &str) -> Option<String> {
        self.items.iter_mut().find_map(|slot| match slot {
            Some(Item::Pair(k, _)) if k == key => match slot.take() {
                Some(Item::Pair(_, value)) => Some(value),
                _ => None,
            },
            _ => None,
        })
    }

    /// Removes the first item if it is a bare word and returns it, or else the value of
    /// `key`: `-smp 4` and `-smp cpus=4` both give `4` for `take_implied("cpus")`.
    pub(crate) fn take_implied(&mut self, key: &str) -> Result<Option<String>> {
        if let Some(slot @ Some(Item::Bare(_))) = self.items.first_mut() {
            let Some(Item::Bare(word)) = slot.take() else {
                return Ok(None);
            };
            if self.take(key).is_some() {
                return Err(ConfigError::DuplicateKey {
                    option: self.option.clone(),
                    key: key.to_string(),
                });
            }
            return Ok(Some(word));
        }
        Ok(self.take(key))
    }

    /// Removes the bare word `flag`; returns whether it was there.
    pub(crate) fn take_flag(&mut self, flag: &str) -> bool {
        self.items
            .iter_mut()
            .find(|slot| matches!(slot, Some(Item::Bare(word)) if word == flag))
            .map(Option::take)
            .is_some()
    }

    /// Removes and returns every remaining bare word, in order.
    pub(crate) fn take_bare_words(&mut self) -> Vec<String> {
        self.items
            .iter_mut()
            .filter(|slot| matches!(slot, Some(Item::Bare(_))))
            .filter_map(|slot| match slot.take() {
                Some(Item::Bare(word)) => Some(word),
                _ => None,
            })
            .collect()
    }

    /// Removes and returns every remaining `key=value` pair, in order.
    pub(crate) fn take_pairs(&mut self) -> Vec<(String, String)> {
        self.items
            .iter_mut()
            .filter(|slot| matches!(slot, Some(Item::Pair(..))))
            .filter_map(|slot| match slot.take() {
                Some(Item::Pair(key, value)) => Some((key, value)),
                _ => None,
            })
            .collect()
    }

    /// Fails on the first item no parser consumed.
    pub(crate) fn finish(self) -> Result<()> {
        match self.items.into_iter().flatten().next() {
            None => Ok(()),
            Some(Item::Pair(key, _)) | Some(Item::Bare(key)) => Err(ConfigError::UnknownKey {
                option: self.option,
                key,
            }),
        }
    }

    /// An [`ConfigError::InvalidValue`] for `key` of this option.
    pub(crate) fn invalid(&self, key: &str, value: &str, expected: &str) -> ConfigError {
        ConfigError::InvalidValue {
            option: self.option.clone(),
            key: key.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }

    /// A [`ConfigError::MissingKey`] for `key` of this option.
    pub(crate) fn missing(&self, key: &str) -> ConfigError {
        ConfigError::MissingKey {
            option: self.option.clone(),
            key: key.to_string(),
        }
    }

    /// The value of `key`, which must be present.
    pub(crate) fn require(&mut self, key: &str) -> Result<String> {
        self.take(key).ok_or_else(|| self.missing(key))
    }

    /// The value of the boolean `key` (`on|off`, `true|false`, or the bare word `key` for
    /// on), if present.
    pub(crate) fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        if self.take_flag(key) {
            return Ok(Some(true));
        }
        match self.take(key) {
            None => Ok(None),
            Some(value) => match value.as_str() {
                "on" | "true" => Ok(Some(true)),
                "off" | "false" => Ok(Some(false)),
                _ => Err(self.invalid(key, &value, "on or off")),
            },
        }
    }
}

/// Parses a decimal number made of ASCII digits only (no sign, no spaces), without overflow.
pub(crate) fn parse_u64(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_bare_words_and_escaped_commas() {
        let mut kv = KvList::parse("-drive", "virtio,file=/a,,b.img,ro").unwrap();
        assert_eq!(
            kv.take_implied("driver").unwrap().as_deref(),
            Some("virtio")
        );
        assert_eq!(kv.take("file").as_deref(), Some("/a,b.img"));
        assert!(kv.take_flag("ro"));
        assert!(!kv.take_flag("ro"));
        kv.finish().unwrap();
    }

    #[test]
    fn implied_key_may_be_spelled_out() {
        let mut kv = KvList::parse("-smp", "cpus=4").unwrap();
        assert_eq!(kv.take_implied("cpus").unwrap().as_deref(), Some("4"));
        let mut both = KvList::parse("-smp", "4,cpus=4").unwrap();
        assert!(matches!(
            both.take_implied("cpus"),
            Err(ConfigError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn empty_items_duplicates_and_leftovers_are_errors() {
        for text in ["", ",", "a=1,", ",a=1", "a=1,,b=2,"] {
            assert!(
                matches!(
                    KvList::parse("-x", text),
                    Err(ConfigError::EmptyItem { .. })
                ),
                "{text:?}"
            );
        }
        assert!(matches!(
            KvList::parse("-x", "a=1,a=2"),
            Err(ConfigError::DuplicateKey { .. })
        ));
        let mut kv = KvList::parse("-x", "a=1,b=2").unwrap();
        kv.take("a");
        assert_eq!(
            kv.finish(),
            Err(ConfigError::UnknownKey {
                option: "-x".into(),
                key: "b".into()
            })
        );
    }

    #[test]
    fn booleans_and_numbers() {
        let mut kv = KvList::parse("-x", "a=on,b=false,c=maybe,e").unwrap();
        assert_eq!(kv.take_bool("a").unwrap(), Some(true));
        assert_eq!(kv.take_bool("e").unwrap(), Some(true));
        assert_eq!(kv.take_bool("b").unwrap(), Some(false));
        assert!(kv.take_bool("c").is_err());
        assert_eq!(kv.take_bool("d").unwrap(), None);
        assert_eq!(parse_u64("42"), Some(42));
        for bad in ["", "-1", "+1", " 1", "1x", "18446744073709551616"] {
            assert_eq!(parse_u64(bad), None, "{bad:?}");
        }
    }
}
