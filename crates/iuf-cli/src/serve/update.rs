//! Changes to the served model made through the API, behind the token like a reload:
//! `POST /v1/objects/{name}/good` (good images added to a learned object, `iuf learn --more`'s
//! update) and `PUT /v1/objects/{name}/threshold` (`iuf threshold`'s).
//!
//! Each runs on a blocking thread beside inspection (batches go on with the model being served),
//! from the served model file's bytes (refused when the file no longer is the served model). The
//! previous file is kept beside it as `<file>.before-<sha256 prefix>`; the new model is written to
//! a temporary name and renamed over the served file, then swapped in the way a reload swaps
//! (checked as a whole, requests in flight finish on the old model). One change or reload at a
//! time.

use std::path::{Path, PathBuf};

use axum::body::Bytes;
use axum::extract::{FromRequest, Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use iuf_incremental::{Learner, ThresholdRule};
use serde::Deserialize;
use serde_json::json;

use super::batch::decode;
use super::{authorised, read_uploads, reload_locked, stopping, ApiError, Shared};
use crate::setup;

/// Images decoded and run through the backbone at once while adding good images.
const CHUNK: usize = 8;

fn unauthorised(what: &str) -> ApiError {
    ApiError(
        StatusCode::UNAUTHORIZED,
        format!(
            "{what} needs the header `Authorization: Bearer <token>` with this service's token"
        ),
    )
}

/// The checks every change makes before reading its body: not stopping, the token, and a
/// service that may write unsigned models.
fn admit(s: &Shared, headers: &axum::http::HeaderMap, what: &str) -> Result<(), ApiError> {
    if s.stopping.load(std::sync::atomic::Ordering::Acquire) {
        return Err(stopping());
    }
    if !authorised(s, headers) {
        return Err(unauthorised(what));
    }
    if s.signed_by.is_some() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "{what} is off: this service serves only signed models (--require-signed) and \
                 cannot sign the changed one; change the model offline (`iuf learn --more`, \
                 `iuf threshold`), sign it with `iuf sign` and reload"
            ),
        ));
    }
    Ok(())
}

/// The served model file, read again and checked to be the model being served: the learner to
/// change, and the file's sha256.
fn served_file(s: &Shared) -> Result<(Learner, String), ApiError> {
    let bytes = std::fs::read(&s.path).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the model file cannot be read again ({e})"),
        )
    })?;
    let sha = iuf_backbone::fetch::sha256_hex(&bytes);
    let current = s.model.load();
    if sha != current.sha256 {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "the model file has changed since the model with sha256 {} was loaded: reload it \
                 (POST /v1/reload) before changing it",
                &current.sha256[..16]
            ),
        ));
    }
    let learner = setup::load_model_bytes(&s.path, &bytes, &s.device).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the model file cannot be loaded again: {:#}",
                e.root_cause()
            ),
        )
    })?;
    Ok((learner, sha))
}

/// Keeps the served file as `<file>.before-<sha prefix>` (a hard link, else a copy), then writes
/// `learner` over it (temporary name, then rename). Returns the kept file's name.
fn write_over(path: &Path, learner: &Learner, previous_sha: &str) -> Result<String, ApiError> {
    let name = super::model::file_name(path);
    let kept_name = format!("{name}.before-{}", &previous_sha[..16]);
    let kept: PathBuf = path.with_file_name(&kept_name);
    let fail = |what: String| ApiError(StatusCode::INTERNAL_SERVER_ERROR, what);
    if !kept.exists() && std::fs::hard_link(path, &kept).is_err() {
        std::fs::copy(path, &kept)
            .map_err(|e| fail(format!("keeping the previous model as {kept_name}: {e}")))?;
    }
    learner
        .save(path)
        .map_err(|e| fail(format!("writing the changed model: {e}")))?;
    Ok(kept_name)
}

/// Runs `change` on the served model file's learner on a blocking thread, writes the result over
/// the served file and swaps it in; answers with the change's JSON plus the new sha256.
async fn change_model(
    s: Shared,
    change: impl FnOnce(&mut Learner, &super::model::Served) -> Result<serde_json::Value, ApiError>
        + Send
        + 'static,
) -> Result<Response, ApiError> {
    let _one = s.reloading.lock().await;
    let state = s.clone();
    let done = tokio::task::spawn_blocking(move || {
        let (mut learner, previous) = served_file(&state)?;
        let served = state.model.load_full();
        let body = change(&mut learner, &served)?;
        let kept = write_over(&state.path, &learner, &previous)?;
        Ok::<_, ApiError>((body, previous, kept))
    })
    .await
    .map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the update task failed: {e}; the model being served is unchanged"),
        )
    })??;
    let (mut body, previous, kept) = done;
    let (status, reload) = reload_locked(&s).await;
    if status != StatusCode::OK {
        return Err(ApiError(
            status,
            format!(
                "the changed model was written but not swapped in: {}",
                reload["error"].as_str().unwrap_or("reload failed")
            ),
        ));
    }
    body["model_sha256"] = reload["sha256"].clone();
    body["previous_sha256"] = json!(previous);
    body["previous_kept_as"] = json!(kept);
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// `POST /v1/objects/{name}/good`: good images of `name` (the body, or multipart parts) added to
/// its memory and Gaussian, its threshold recalibrated.
pub async fn add_good(
    State(s): State<Shared>,
    UrlPath(object): UrlPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let what = format!("POST /v1/objects/{object}/good");
    let admitted = admit(&s, req.headers(), &what);
    // The body is read before answering (closing a connection mid-upload breaks the client).
    let (_, uploads) = read_uploads(req, &s).await?;
    admitted?;
    if uploads.iter().all(|u| u.bytes.is_empty()) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "no image: send good images of the object as the body or as multipart/form-data".into(),
        ));
    }
    for u in &uploads {
        if let Some(why) = u.size.and_then(|(w, h)| s.budget.refuse_upload(w, h)) {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{}: {why}", u.name),
            ));
        }
    }
    let started = std::time::Instant::now();
    change_model(s.clone(), move |learner, served| {
        learner
            .check_add_good(&object)
            .map_err(|e| ApiError(StatusCode::CONFLICT, format!("{what}: {e}")))?;
        let inspector = iuf_inspect::Inspector::new(learner, &served.backbone.backbone)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
        let mut parts = Vec::new();
        let mut timings = iuf_inspect::Timings::default();
        for chunk in uploads.chunks(CHUNK) {
            let images = chunk
                .iter()
                .map(decode)
                .collect::<Result<Vec<_>, String>>()
                .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e))?;
            let refs: Vec<_> = images.iter().collect();
            parts.push(
                inspector
                    .features(&refs, &mut timings)
                    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?,
            );
        }
        let x = concat(parts)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
        let added = iuf_incremental::add_good_images(learner, &object, &x)
            .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("{what}: {e}")))?;
        tracing::warn!(
            "{what}: {} image(s) added to `{object}`, {} held out; threshold {:?} -> {:?} ({:.1} s)",
            added.train,
            added.holdout,
            added.threshold_before,
            added.threshold_after,
            started.elapsed().as_secs_f64()
        );
        Ok(json!({ "object": object, "added": added }))
    })
    .await
}

/// The features of several chunks as one.
fn concat(
    parts: Vec<iuf_incremental::ImageFeatures>,
) -> anyhow::Result<iuf_incremental::ImageFeatures> {
    let cat = |ts: Vec<&candle_core::Tensor>| -> anyhow::Result<candle_core::Tensor> {
        Ok(candle_core::Tensor::cat(&ts, 0)?)
    };
    let opt = |get: fn(&iuf_incremental::ImageFeatures) -> Option<&candle_core::Tensor>| {
        let ts: Option<Vec<&candle_core::Tensor>> = parts.iter().map(get).collect();
        ts.map(cat).transpose()
    };
    Ok(iuf_incremental::ImageFeatures {
        align: cat(parts.iter().map(|p| &p.align).collect())?,
        memory: opt(|p| p.memory.as_ref())?,
        tiles: opt(|p| p.tiles.as_ref())?,
    })
}

/// The body of `PUT /v1/objects/{name}/threshold`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdBody {
    quantile: Option<f64>,
    value: Option<f32>,
    /// Who sets it (recorded as `api:<by>`; default `api`).
    by: Option<String>,
}

/// `PUT /v1/objects/{name}/threshold`: `{"quantile": Q}` or `{"value": V}`, optionally `"by"`.
pub async fn set_threshold(
    State(s): State<Shared>,
    UrlPath(object): UrlPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let what = format!("PUT /v1/objects/{object}/threshold");
    let admitted = admit(&s, req.headers(), &what);
    let body = Bytes::from_request(req, &s)
        .await
        .map_err(|e| ApiError(e.status(), format!("reading the body: {}", e.body_text())))?;
    admitted?;
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, format!("{what}: {m}"));
    let b: ThresholdBody = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "the body must be JSON {{\"quantile\": Q}} or {{\"value\": V}} (and optionally \"by\"): {e}"
        ))
    })?;
    let rule = match (b.quantile, b.value) {
        (Some(q), None) if (0.0..=1.0).contains(&q) => ThresholdRule::Quantile(q),
        (Some(q), None) => return Err(bad(format!("quantile must lie in [0, 1], found {q}"))),
        (None, Some(v)) if v.is_finite() => ThresholdRule::Value(v),
        _ => {
            return Err(bad(
                "give exactly one of `quantile` and `value` (a finite number)".into(),
            ))
        }
    };
    let by = match b.by.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => format!("api:{n}"),
        _ => "api".to_string(),
    };
    change_model(s.clone(), move |learner, _| {
        let before = learner.threshold(&object, learner.config().calibration.quantile);
        let setting = learner
            .set_threshold(&object, rule, &by)
            .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("{what}: {e}")))?;
        tracing::warn!(
            "{what}: threshold of `{object}` {before:?} -> {} ({}) set by {}",
            setting.value,
            setting.rule,
            setting.set_by
        );
        Ok(json!({ "object": object, "threshold_before": before, "threshold": setting }))
    })
    .await
}
