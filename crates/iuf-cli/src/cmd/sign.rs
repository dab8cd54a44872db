//! `iuf sign`: Ed25519 signatures of model files, so that a plant can refuse models that did not
//! come from its own pipeline (`--require-signed PUBKEY` on `predict` and `serve`).
//!
//! A signature covers the model file's content digest (`iuf_model::file::content_digest`: format,
//! metadata and tensors, each checked against its stored digest) and sits in the file's header
//! beside the public key that made it; it changes nothing the model computes. Keys are 32 bytes
//! in hex on one line of a small text file (lines starting with `#` are comments).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use iuf_incremental::Learner;
use iuf_model::file::{KEY_SIGNATURE, KEY_SIGNATURE_KEY};

use crate::{setup, Global};

/// What a signature signs: a fixed prefix and the model's content digest.
const DOMAIN: &[u8] = b"iuf-model-signature-v1\0";
const PRIVATE_HEAD: &str = "# iuf Ed25519 private key: keep it secret (iuf sign --key)";
const PUBLIC_HEAD: &str = "# iuf Ed25519 public key (iuf predict/serve --require-signed)";

/// Arguments of `iuf sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The model file to sign (it is not modified: the signed copy goes to --out).
    #[arg(long, value_name = "FILE", requires_all = ["key", "out"],
          required_unless_present = "generate_key")]
    pub model: Option<PathBuf>,
    /// The private key file (from `iuf sign --generate-key`).
    #[arg(long, value_name = "KEYFILE")]
    pub key: Option<PathBuf>,
    /// Where the signed model goes (a new file; never the input model).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Create a key pair instead: the private key in KEYFILE (readable by its owner only), the
    /// public key in KEYFILE.pub and on stdout. An existing file is never replaced.
    #[arg(long, value_name = "KEYFILE", conflicts_with_all = ["model", "key", "out"])]
    pub generate_key: Option<PathBuf>,
}

/// `--require-signed`, on the commands that run a model for others (`predict`, `serve`).
#[derive(Debug, Clone, Args)]
pub struct RequireSigned {
    /// Refuse models that are not signed with this key (`iuf sign`): a public key file
    /// (KEYFILE.pub of `iuf sign --generate-key`) or the key itself in hex.
    #[arg(long, value_name = "PUBKEY")]
    pub require_signed: Option<String>,
}

impl RequireSigned {
    /// The public key asked for, read and checked before any work.
    pub fn key(&self) -> Result<Option<VerifyingKey>> {
        self.require_signed.as_deref().map(public_key).transpose()
    }
}

pub fn run(g: &Global, a: SignArgs) -> Result<ExitCode> {
    if let Some(keyfile) = &a.generate_key {
        return generate(g, keyfile);
    }
    let (Some(model), Some(keyfile), Some(out)) = (&a.model, &a.key, &a.out) else {
        bail!("iuf sign needs --model, --key and --out (or --generate-key KEYFILE)");
    };
    setup::check_output(
        "--out",
        out,
        false,
        &[("--model", model), ("--key", keyfile)],
    )?;
    setup::check_writable("--out", out, false)?;
    let key = private_key(keyfile)?;
    let bytes =
        std::fs::read(model).with_context(|| format!("reading model {}", model.display()))?;
    // The whole model is checked first: a damaged file is never signed.
    setup::load_model_bytes(model, &bytes, &Device::Cpu)?;
    let digest = iuf_model::file::content_digest(model, &bytes)
        .with_context(|| format!("model {} cannot be signed", model.display()))?;
    let signature = key.sign(&message(&digest));
    let public = hex(key.verifying_key().as_bytes());
    let signed = iuf_model::file::with_header(
        model,
        &bytes,
        &[
            (KEY_SIGNATURE, hex(&signature.to_bytes())),
            (KEY_SIGNATURE_KEY, public.clone()),
        ],
    )?;
    iuf_model::file::write_model_bytes(out, &signed)
        .with_context(|| format!("writing the signed model {}", out.display()))?;
    if g.json {
        super::print_json(&serde_json::json!({
            "model": out,
            "signed_by": public,
            "content_sha256": digest,
        }))?;
    } else {
        println!(
            "signed {} with key {public}: {}",
            model.display(),
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads `path` as [`setup::load_model`] does and, with `key`, refuses it unless it carries a
/// valid signature by that key over its content.
pub fn load_model(path: &Path, device: &Device, key: Option<&VerifyingKey>) -> Result<Learner> {
    let Some(key) = key else {
        return setup::load_model(path, device);
    };
    let bytes = std::fs::read(path).with_context(|| format!("reading model {}", path.display()))?;
    let learner = setup::load_model_bytes(path, &bytes, device)?;
    verify(path, &bytes, key)
        .map_err(|r| anyhow::anyhow!(r.message(&path.display().to_string(), key, false)))?;
    Ok(learner)
}

/// Why a model is refused under `--require-signed`.
#[derive(Debug)]
pub enum Refused {
    /// The file carries no signature.
    Unsigned,
    /// Signed by another key (its hex).
    OtherKey(String),
    /// Its signature does not match its content: changed after signing.
    Changed,
    /// Its content digest cannot be computed, or its signature is malformed.
    Unreadable(String),
}

impl Refused {
    /// The message, naming the model file `file`: for the command line, or (`api`) for an HTTP
    /// client.
    pub fn message(&self, file: &str, key: &VerifyingKey, api: bool) -> String {
        let short = |k: &str| k.chars().take(16).collect::<String>();
        let want = short(&hex(key.as_bytes()));
        match (self, api) {
            (Self::Unsigned, false) => format!(
                "model {file} is not signed; --require-signed {want}... accepts only models \
                 signed with that key (`iuf sign --model FILE --key KEYFILE --out SIGNED`)"
            ),
            (Self::Unsigned, true) => format!(
                "the model file {file} is not signed, and this service takes only models signed \
                 with key {want}..."
            ),
            (Self::OtherKey(k), false) => format!(
                "model {file} is signed by key {}..., not by the key --require-signed gives \
                 ({want}...)",
                short(k)
            ),
            (Self::OtherKey(k), true) => format!(
                "the model file {file} is signed by key {}..., not by the key this service \
                 requires ({want}...)",
                short(k)
            ),
            (Self::Changed, false) => format!(
                "model {file}: its signature by key {want}... does not match its content: the \
                 file was changed after it was signed (sign it again if the change is yours)"
            ),
            (Self::Changed, true) => format!(
                "the model file {file} was changed after it was signed: its signature by key \
                 {want}... does not match its content"
            ),
            (Self::Unreadable(why), _) => {
                format!("the signature of model {file} cannot be checked: {why}")
            }
        }
    }
}

/// Checks that the model file `bytes` (read from `path`) carries a signature by `key` over its
/// content.
pub fn verify(path: &Path, bytes: &[u8], key: &VerifyingKey) -> Result<(), Refused> {
    let unreadable = |e: iuf_model::ModelError| Refused::Unreadable(e.to_string());
    let header = iuf_model::file::header(path, bytes).map_err(unreadable)?;
    let (Some(signature), Some(signer)) =
        (header.get(KEY_SIGNATURE), header.get(KEY_SIGNATURE_KEY))
    else {
        return Err(Refused::Unsigned);
    };
    if *signer != hex(key.as_bytes()) {
        return Err(Refused::OtherKey(signer.clone()));
    }
    let digest = iuf_model::file::content_digest(path, bytes).map_err(unreadable)?;
    let signature = unhex::<64>(signature)
        .map(|b| Signature::from_bytes(&b))
        .ok_or_else(|| Refused::Unreadable("it is not 64 bytes in hex".into()))?;
    key.verify_strict(&message(&digest), &signature)
        .map_err(|_| Refused::Changed)
}

fn message(digest: &str) -> Vec<u8> {
    [DOMAIN, digest.as_bytes()].concat()
}

/// Writes a new key pair: the private key (mode 0600) and `<KEYFILE>.pub`, each created anew
/// (never over an existing file) through a temporary file.
fn generate(g: &Global, keyfile: &Path) -> Result<ExitCode> {
    let public_file = pub_path(keyfile);
    for f in [keyfile, public_file.as_path()] {
        if f.exists() {
            bail!(
                "{} already exists; iuf sign --generate-key never replaces a key (choose another \
                 name, or delete it if it is no longer needed)",
                f.display()
            );
        }
    }
    let mut seed = [0u8; 32];
    rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut seed)
        .context("the operating system gave no random bytes for a key")?;
    let key = SigningKey::from_bytes(&seed);
    let public = hex(key.verifying_key().as_bytes());
    create_new(keyfile, &format!("{PRIVATE_HEAD}\n{}\n", hex(&seed)), 0o600)?;
    create_new(&public_file, &format!("{PUBLIC_HEAD}\n{public}\n"), 0o644)?;
    if g.json {
        super::print_json(&serde_json::json!({
            "private_key": keyfile,
            "public_key_file": public_file,
            "public_key": public,
        }))?;
    } else {
        println!("{public}");
        eprintln!(
            "private key in {} (keep it secret), public key in {}",
            keyfile.display(),
            public_file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `KEYFILE.pub`.
fn pub_path(keyfile: &Path) -> PathBuf {
    let mut name = keyfile.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Creates `path` with `text` and permissions `mode`: written to a temporary file in the same
/// folder first, then linked to its name, which fails if the name exists meanwhile.
fn create_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = iuf_model::temp_path(path);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    written.with_context(|| format!("writing the key file {}", path.display()))
}

/// The private key in `keyfile`.
fn private_key(keyfile: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(keyfile)
        .with_context(|| format!("reading the private key {}", keyfile.display()))?;
    if text.contains(PUBLIC_HEAD) {
        bail!(
            "--key {} is a public key; signing needs the private key (the file without .pub)",
            keyfile.display()
        );
    }
    let seed = key_line(&text).and_then(unhex::<32>).with_context(|| {
        format!(
            "--key {} is not a private key of `iuf sign --generate-key` (32 bytes in hex)",
            keyfile.display()
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key of `--require-signed`: a key file, or the key in hex.
fn public_key(given: &str) -> Result<VerifyingKey> {
    let path = Path::new(given);
    let text = if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the public key {}", path.display()))?;
        if text.contains(PRIVATE_HEAD) {
            bail!(
                "--require-signed {given} is a private key; pass the public key ({given}.pub), \
                 and keep the private key off the machines that run models"
            );
        }
        text
    } else {
        given.to_string()
    };
    let bytes = key_line(&text).and_then(unhex::<32>).with_context(|| {
        format!(
            "--require-signed {given}: neither a public key file of `iuf sign --generate-key` \
             nor a public key in hex (64 hex digits)"
        )
    })?;
    VerifyingKey::from_bytes(&bytes)
        .with_context(|| format!("--require-signed {given}: not a valid Ed25519 public key"))
}

/// The first line that is not a comment.
fn key_line(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim();
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_other_lengths() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(unhex::<4>(&hex(&bytes)), Some(bytes));
        assert_eq!(unhex::<4>("00ab"), None);
        assert_eq!(unhex::<2>("zz00"), None);
        assert_eq!(key_line("# c\n\n  abcd \n"), Some("abcd"));
    }
}
