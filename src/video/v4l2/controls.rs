//! A camera's picture controls through `VIDIOC_QUERY_EXT_CTRL`, `VIDIOC_G_CTRL` and
//! `VIDIOC_S_CTRL`, on a second file handle of the device (V4L2 allows that while another handle
//! streams).
use v4l::control::{Flags, MenuItem, Type, Value};

use crate::video::controls::{Control, ControlError, PictureControls, control_name};

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
    let device =
        v4l::Device::with_path(path).map_err(|e| device_error(path, "opening for controls", e))?;
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

fn list_controls(path: &str) -> Result<Vec<Control>, ControlError> {
    Ok(read(path)?.1.into_iter().map(|(_, c, _)| c).collect())
}

fn set_control(path: &str, name: &str, value: i64) -> Result<Control, ControlError> {
    let (device, controls) = read(path)?;
    let Some((id, control, flags)) = controls.iter().find(|(_, c, _)| c.name == name) else {
        let list: Vec<Control> = controls.into_iter().map(|(_, c, _)| c).collect();
        return Err(ControlError::unknown(name, &list));
    };
    if flags.contains(Flags::READ_ONLY) {
        return Err(ControlError::ReadOnly {
            name: name.to_string(),
        });
    }
    control.check(value)?;
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

/// The controls of the V4L2 device at a path.
pub struct V4l2Controls {
    pub path: String,
}

impl PictureControls for V4l2Controls {
    fn list(&self) -> Result<Vec<Control>, ControlError> {
        list_controls(&self.path)
    }

    fn set(&self, name: &str, value: i64) -> Result<Control, ControlError> {
        set_control(&self.path, name, value)
    }
}
