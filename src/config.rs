//! `optimize --config kiln.toml`: a TOML file whose keys are the long names of `optimize`'s
//! flags (`snake_case` or `kebab-case`). The file becomes a list of flags placed before the
//! command line's, so flags given on the command line win (list flags such as `--exclude`
//! add to the file's).
//!
//! ```toml
//! target = "tensorrt"
//! precision = "int8"
//! calibration = "percentile:99.99"
//! exclude = ["Softmax", "head/MatMul"]
//! shapes = ["x=1x3x224x224:8x3x224x224:32x3x224x224"]
//! force = true
//! ```

use std::path::{Path, PathBuf};

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: key '{key}': {message}", .path.display())]
    Key { path: PathBuf, key: String, message: String },
}

/// The flags a config file stands for, in key order (each key is one option). `known` lists the flags' long names;
/// any other key is an error naming the file and the key.
pub fn flags_from_file(path: &Path, known: &[String]) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    flags_from_str(&text, known).map_err(|e| match e {
        Problem::Parse(message) => ConfigError::Parse { path: path.into(), message },
        Problem::Key(key, message) => ConfigError::Key { path: path.into(), key, message },
    })
}

enum Problem {
    Parse(String),
    Key(String, String),
}

fn flags_from_str(text: &str, known: &[String]) -> Result<Vec<String>, Problem> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Problem::Parse(e.message().to_string()))?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let name = key.replace('_', "-");
        if name == "model" || name == "config" {
            return Err(Problem::Key(key.clone(), "give this on the command line".into()));
        }
        if !known.contains(&name) {
            let mut names = known.to_vec();
            names.sort();
            return Err(Problem::Key(key.clone(), format!("not an optimize option; known: {}", names.join(", "))));
        }
        let scalar = |v: &toml::Value| -> Result<Option<String>, Problem> {
            match v {
                toml::Value::String(s) => Ok(Some(s.clone())),
                toml::Value::Integer(i) => Ok(Some(i.to_string())),
                toml::Value::Float(f) => Ok(Some(f.to_string())),
                toml::Value::Boolean(_) => Err(Problem::Key(key.clone(), "a list of booleans means nothing".into())),
                _ => Err(Problem::Key(key.clone(), "expected a string, number, boolean or list".into())),
            }
        };
        match value {
            toml::Value::Boolean(true) => flags.push(format!("--{name}")),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    if let Some(v) = scalar(item)? {
                        flags.push(format!("--{name}={v}"));
                    }
                }
            }
            other => {
                if let Some(v) = scalar(other)? {
                    flags.push(format!("--{name}={v}"));
                }
            }
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        ["target", "precision", "exclude", "force", "threads", "calibration-split", "output"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn keys_become_flags() {
        let flags = flags_from_str(
            "target = \"cuda\"\nexclude = [\"Softmax\", \"head\"]\nforce = true\nthreads = 2\ncalibration_split = 80.5\n",
            &known(),
        )
        .ok()
        .unwrap();
        let want = [
            "--calibration-split=80.5",
            "--exclude=Softmax",
            "--exclude=head",
            "--force",
            "--target=cuda",
            "--threads=2",
        ];
        assert_eq!(flags, want);
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kiln.toml");
        std::fs::write(&p, "targt = \"cpu\"\n").unwrap();
        let e = flags_from_file(&p, &known()).unwrap_err().to_string();
        assert!(e.contains("kiln.toml") && e.contains("targt") && e.contains("known: "), "{e}");
        std::fs::write(&p, "target = \n").unwrap();
        assert!(matches!(flags_from_file(&p, &known()), Err(ConfigError::Parse { .. })));
        std::fs::write(&p, "[target]\nx = 1\n").unwrap();
        assert!(flags_from_file(&p, &known()).unwrap_err().to_string().contains("expected a string"));
        std::fs::write(&p, "model = \"m.onnx\"\n").unwrap();
        assert!(flags_from_file(&p, &known()).unwrap_err().to_string().contains("command line"));
    }
}
