//! Picture controls (brightness and the like) that viewers list and change over the data channel.
//!
//! Sources run on the capture thread, so controls are not reached through the source: a source's
//! row in [`super::SOURCES`] makes its [`Controls`] once, the hub keeps them, and the source gets
//! its share when it opens. Each kind of source implements [`PictureControls`] in its own file:
//! the test pattern's are atomics that the pattern reads every frame; a V4L2 camera's are the
//! device's own. A change applies to the one shared stream, so every viewer sees it.

use std::sync::Arc;

use serde::Serialize;

/// One control as listed to viewers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Control {
    /// Lower-case name with `_` between words (`brightness`, `white_balance_automatic`).
    pub name: String,
    /// `integer`, `boolean` or `menu`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub min: i64,
    pub max: i64,
    pub step: u64,
    pub default: i64,
    pub value: i64,
    /// Menu entries `(value, label)`; empty for other types.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub menu: Vec<(i64, String)>,
}

impl Control {
    /// Check `value` against the control's range, step and menu.
    pub fn check(&self, value: i64) -> Result<(), ControlError> {
        let step = self.step.max(1) as i128;
        let on_step = (i128::from(value) - i128::from(self.min)) % step == 0;
        let in_menu = self.menu.is_empty() || self.menu.iter().any(|(v, _)| *v == value);
        if value < self.min || value > self.max || !on_step || !in_menu {
            return Err(ControlError::OutOfRange {
                name: self.name.clone(),
                value,
                min: self.min,
                max: self.max,
                step: self.step,
            });
        }
        Ok(())
    }
}

/// Why a control could not be listed or set. The text names the control and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("no control named `{name}`; controls: {known}")]
    Unknown { name: String, known: String },
    #[error("{name} must be within {min}..={max} in steps of {step}, got {value}")]
    OutOfRange {
        name: String,
        value: i64,
        min: i64,
        max: i64,
        step: u64,
    },
    #[error("{name} is read-only")]
    ReadOnly { name: String },
    #[error("{device}: {message}")]
    Device { device: String, message: String },
}

impl ControlError {
    /// `name` is none of `controls`.
    pub fn unknown(name: &str, controls: &[Control]) -> ControlError {
        ControlError::Unknown {
            name: name.to_string(),
            known: controls
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// The controls of one kind of source. Calls may block (a device's controls are ioctls).
pub trait PictureControls: Send + Sync {
    /// Every control with its range and current value.
    fn list(&self) -> Result<Vec<Control>, ControlError>;
    /// Set control `name` to `value`; returns the control as it now is.
    fn set(&self, name: &str, value: i64) -> Result<Control, ControlError>;
}

/// The picture controls of the configured source. Cloning is cheap.
#[derive(Clone, Default)]
pub struct Controls(Option<Arc<dyn PictureControls>>);

impl Controls {
    pub fn new(controls: Arc<dyn PictureControls>) -> Controls {
        Controls(Some(controls))
    }

    /// For a source without controls.
    pub fn none() -> Controls {
        Controls(None)
    }

    /// Every control with its range and current value.
    pub fn list(&self) -> Result<Vec<Control>, ControlError> {
        match &self.0 {
            Some(controls) => controls.list(),
            None => Ok(Vec::new()),
        }
    }

    /// Set control `name` to `value`; returns the control as it now is.
    pub fn set(&self, name: &str, value: i64) -> Result<Control, ControlError> {
        match &self.0 {
            Some(controls) => controls.set(name, value),
            None => Err(ControlError::Unknown {
                name: name.to_string(),
                known: "(none: this source has no controls)".into(),
            }),
        }
    }
}

/// Control names as viewers see them: lower case, words joined by `_`.
pub fn control_name(label: &str) -> String {
    let mut name = String::new();
    for word in label
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !name.is_empty() {
            name.push('_');
        }
        name.push_str(&word.to_ascii_lowercase());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4l2_labels_become_names() {
        assert_eq!(
            control_name("White Balance Temperature, Auto"),
            "white_balance_temperature_auto"
        );
        assert_eq!(control_name("Brightness"), "brightness");
    }

    #[test]
    fn a_source_without_controls_lists_none_and_sets_none() {
        let none = Controls::none();
        assert_eq!(none.list(), Ok(Vec::new()));
        assert_eq!(
            none.set("brightness", 1).unwrap_err().to_string(),
            "no control named `brightness`; controls: (none: this source has no controls)"
        );
    }
}
