//! Picture controls (brightness and the like) that viewers list and change over the data channel.
//!
//! Sources run on the capture thread, so controls are not reached through the source: a
//! [`Controls`] handle is made from the [`VideoSpec`] once, kept by the hub, and shared with the
//! source when it opens. The test pattern's controls are atomics that the pattern reads every
//! frame; a V4L2 camera's are the device's own, read and written through a second file handle on
//! the device (V4L2 allows that while another handle streams). A change applies to the one
//! shared stream, so every viewer sees it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::Serialize;

use super::VideoSpec;

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

/// The picture controls of the configured source. Cloning is cheap.
#[derive(Clone)]
pub enum Controls {
    /// The test pattern's own controls.
    Pattern(Arc<PatternControls>),
    /// A V4L2 camera's controls, by device path.
    V4l2(String),
    /// A source without controls.
    None,
}

impl Controls {
    /// The controls for the source `spec` names.
    pub fn for_spec(spec: &VideoSpec) -> Controls {
        match spec.source.as_str() {
            "test" => Controls::Pattern(Arc::new(PatternControls::default())),
            s if s.starts_with(super::fault_injection::PREFIX) => Controls::None,
            path => Controls::V4l2(path.to_string()),
        }
    }

    /// Every control with its range and current value.
    pub fn list(&self) -> Result<Vec<Control>, ControlError> {
        match self {
            Controls::Pattern(p) => Ok(p.list()),
            Controls::V4l2(path) => v4l2::list(path),
            Controls::None => Ok(Vec::new()),
        }
    }

    /// Set control `name` to `value`; returns the control as it now is.
    pub fn set(&self, name: &str, value: i64) -> Result<Control, ControlError> {
        match self {
            Controls::Pattern(p) => p.set(name, value),
            Controls::V4l2(path) => v4l2::set(path, name, value),
            Controls::None => Err(ControlError::Unknown {
                name: name.to_string(),
                known: "(none: this source has no controls)".into(),
            }),
        }
    }
}

/// Check `value` against a control's range and step.
fn check(control: &Control, value: i64) -> Result<(), ControlError> {
    let step = control.step.max(1) as i128;
    let on_step = (i128::from(value) - i128::from(control.min)) % step == 0;
    let in_menu = control.menu.is_empty() || control.menu.iter().any(|(v, _)| *v == value);
    if value < control.min || value > control.max || !on_step || !in_menu {
        return Err(ControlError::OutOfRange {
            name: control.name.clone(),
            value,
            min: control.min,
            max: control.max,
            step: control.step,
        });
    }
    Ok(())
}

fn unknown(name: &str, controls: &[Control]) -> ControlError {
    ControlError::Unknown {
        name: name.to_string(),
        known: controls
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Neutral value of the test pattern's brightness and contrast (as on most UVC cameras).
pub const PATTERN_NEUTRAL: i64 = 128;

/// The test pattern's controls, applied to the picture's luma (the frame code is drawn after, so
/// it stays readable): `brightness` adds `value - 128` to every luma sample, `contrast` scales
/// luma around mid-grey by `value / 128`.
#[derive(Debug)]
pub struct PatternControls {
    brightness: AtomicI64,
    contrast: AtomicI64,
}

impl Default for PatternControls {
    fn default() -> Self {
        PatternControls {
            brightness: AtomicI64::new(PATTERN_NEUTRAL),
            contrast: AtomicI64::new(PATTERN_NEUTRAL),
        }
    }
}

impl PatternControls {
    fn list(&self) -> Vec<Control> {
        let control = |name: &str, value: &AtomicI64| Control {
            name: name.to_string(),
            kind: "integer",
            min: 0,
            max: 255,
            step: 1,
            default: PATTERN_NEUTRAL,
            value: value.load(Ordering::Relaxed),
            menu: Vec::new(),
        };
        vec![
            control("brightness", &self.brightness),
            control("contrast", &self.contrast),
        ]
    }

    fn set(&self, name: &str, value: i64) -> Result<Control, ControlError> {
        let list = self.list();
        let control = list
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| unknown(name, &list))?;
        check(control, value)?;
        let slot = match name {
            "brightness" => &self.brightness,
            _ => &self.contrast,
        };
        slot.store(value, Ordering::Relaxed);
        Ok(Control {
            value,
            ..control.clone()
        })
    }

    /// Apply the current settings to a luma plane, in place.
    pub fn apply(&self, luma: &mut [u8]) {
        let offset = self.brightness.load(Ordering::Relaxed) - PATTERN_NEUTRAL;
        let gain = self.contrast.load(Ordering::Relaxed);
        if offset == 0 && gain == PATTERN_NEUTRAL {
            return;
        }
        // One table for the 256 possible inputs; the frame then costs a lookup per sample.
        let mut table = [0u8; 256];
        for (i, out) in table.iter_mut().enumerate() {
            let scaled = (i as i64 - 128) * gain / PATTERN_NEUTRAL + 128;
            *out = (scaled + offset).clamp(0, 255) as u8;
        }
        for y in luma.iter_mut() {
            *y = table[usize::from(*y)];
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

mod v4l2 {
    //! A camera's controls through `VIDIOC_QUERY_EXT_CTRL`, `VIDIOC_G_CTRL` and `VIDIOC_S_CTRL`.
    use v4l::control::{Flags, MenuItem, Type, Value};

    use super::{Control, ControlError, check, control_name, unknown};

    fn device_error(path: &str, what: &str, err: std::io::Error) -> ControlError {
        ControlError::Device {
            device: path.to_string(),
            message: format!("{what}: {err}"),
        }
    }

    /// A control with its V4L2 id and flags.
    type Listed = (u32, Control, Flags);

    /// The device's controls with their V4L2 ids, skipping classes, buttons, strings and
    /// compound controls (nothing a slider can set).
    fn read(path: &str) -> Result<(v4l::Device, Vec<Listed>), ControlError> {
        let device = v4l::Device::with_path(path)
            .map_err(|e| device_error(path, "opening for controls", e))?;
        let descriptions = device
            .query_controls()
            .map_err(|e| device_error(path, "listing controls", e))?;
        let mut controls = Vec::new();
        for d in descriptions {
            let kind = match d.typ {
                Type::Integer | Type::Integer64 => "integer",
                Type::Boolean => "boolean",
                Type::Menu | Type::IntegerMenu => "menu",
                _ => continue,
            };
            if d.flags.contains(Flags::DISABLED) {
                continue;
            }
            let value = match device.control(d.id) {
                Ok(c) => match c.value {
                    Value::Integer(v) => v,
                    Value::Boolean(b) => i64::from(b),
                    _ => continue,
                },
                // Write-only or momentarily unavailable: list it at its default.
                Err(_) => d.default,
            };
            let menu = d
                .items
                .unwrap_or_default()
                .into_iter()
                .map(|(i, item)| {
                    let label = match item {
                        MenuItem::Name(name) => name,
                        MenuItem::Value(v) => v.to_string(),
                    };
                    (i64::from(i), label)
                })
                .collect();
            controls.push((
                d.id,
                Control {
                    name: control_name(&d.name),
                    kind,
                    min: d.minimum,
                    max: d.maximum,
                    step: d.step,
                    default: d.default,
                    value,
                    menu,
                },
                d.flags,
            ));
        }
        Ok((device, controls))
    }

    pub(super) fn list(path: &str) -> Result<Vec<Control>, ControlError> {
        Ok(read(path)?.1.into_iter().map(|(_, c, _)| c).collect())
    }

    pub(super) fn set(path: &str, name: &str, value: i64) -> Result<Control, ControlError> {
        let (device, controls) = read(path)?;
        let Some((id, control, flags)) = controls.iter().find(|(_, c, _)| c.name == name) else {
            let list: Vec<Control> = controls.into_iter().map(|(_, c, _)| c).collect();
            return Err(unknown(name, &list));
        };
        if flags.contains(Flags::READ_ONLY) {
            return Err(ControlError::ReadOnly {
                name: name.to_string(),
            });
        }
        check(control, value)?;
        let value_v4l = if control.kind == "boolean" {
            Value::Boolean(value != 0)
        } else {
            Value::Integer(value)
        };
        device
            .set_control(v4l::control::Control {
                id: *id,
                value: value_v4l,
            })
            .map_err(|e| device_error(path, &format!("setting {name}"), e))?;
        Ok(Control {
            value,
            ..control.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_controls_check_names_and_ranges() {
        let p = PatternControls::default();
        assert_eq!(p.set("brightness", 200).map(|c| c.value), Ok(200));
        assert!(matches!(
            p.set("brightness", 256),
            Err(ControlError::OutOfRange { value: 256, .. })
        ));
        let err = p.set("zoom", 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no control named `zoom`; controls: brightness, contrast"
        );
        assert_eq!(p.list()[0].value, 200);
    }

    #[test]
    fn brightness_shifts_luma_and_contrast_scales_it() {
        let p = PatternControls::default();
        let mut y = vec![16u8, 128, 235];
        p.apply(&mut y);
        assert_eq!(y, [16, 128, 235]);
        p.set("brightness", 168).unwrap();
        p.apply(&mut y);
        assert_eq!(y, [56, 168, 255]);
        let p = PatternControls::default();
        p.set("contrast", 64).unwrap();
        let mut y = vec![0u8, 128, 255];
        p.apply(&mut y);
        assert_eq!(y, [64, 128, 191]);
    }

    #[test]
    fn v4l2_labels_become_names() {
        assert_eq!(
            control_name("White Balance Temperature, Auto"),
            "white_balance_temperature_auto"
        );
        assert_eq!(control_name("Brightness"), "brightness");
    }
}
