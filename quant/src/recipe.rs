//! Recipes: YAML files that say what `quantize` does. The schema is strict (unknown keys are
//! errors that name the file, line and key), because a misspelled option silently ignored is
//! how a "4-bit" model ends up 16-bit.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Storage type of tensors the recipe leaves unquantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FloatDtype {
    #[default]
    F32,
    Bf16,
}

/// Output options.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    #[serde(default)]
    pub dtype: FloatDtype,
}

/// A parsed recipe. Quantization stages arrive with the quantization-core work; a recipe
/// without stages is a plain conversion.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    #[serde(default)]
    pub output: OutputSpec,
    #[serde(default)]
    pub stages: Vec<serde_yaml::Value>,
}

/// A recipe that cannot be used; the message starts with the file name.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Recipe {
    /// Reads and validates a recipe file.
    pub fn from_file(path: &Path) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses recipe text; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RecipeError> {
        let recipe: Recipe = serde_yaml::from_str(text).map_err(|e| RecipeError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if !recipe.stages.is_empty() {
            return Err(RecipeError::Invalid {
                path: path.to_owned(),
                message: "`stages`: quantization passes are not implemented yet (only conversion recipes run)".into(),
            });
        }
        Ok(recipe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recipe_in_the_repo_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                Recipe::from_file(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 2, "expected recipes in {}", dir.display());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = Recipe::parse("output:\n  dtype: f32\n  dtyp: bf16\n", Path::new("r.yaml"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("r.yaml: "), "{msg}");
        assert!(msg.contains("dtyp") && msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn wrong_value_is_an_error() {
        let err = Recipe::parse("output:\n  dtype: f8\n", Path::new("r.yaml")).unwrap_err();
        assert!(err.to_string().contains("f8"), "{err}");
    }
}
