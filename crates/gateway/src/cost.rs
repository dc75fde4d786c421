//! `/v1/prices` and `/v1/cost/calc`: the price sheets (built in, and the user's own from
//! `<data>/prices/*.toml`, read at each call so an edited sheet counts at once) and the
//! calculator of what a traffic shape costs under each execution model.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use hangar_api::cost::{CalcAnswer, CalcRequest, PriceSheetInfo, PriceSheetList};
use hangar_cost::{CostError, Sheets};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiJson};

impl From<CostError> for ApiError {
    fn from(e: CostError) -> Self {
        let message = e.to_string();
        match e {
            CostError::Invalid(_) => ApiError::bad_request("invalid_request", message),
            CostError::Sheet(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_price_sheet", format!("{message}; fix or remove the file")),
        }
    }
}

fn sheets(state: &AppState) -> Result<Sheets, ApiError> {
    Ok(Sheets::load(Some(&state.prices_dir))?)
}

/// Every price sheet: where its prices come from, when they were read, what it prices.
#[utoipa::path(get, path = "/v1/prices", tag = "cost", responses((status = 200, body = PriceSheetList), (status = 422, body = hangar_api::ErrorBody)))]
pub async fn list(State(state): State<AppState>, _p: Principal) -> Result<Json<PriceSheetList>, ApiError> {
    let items = sheets(&state)?
        .all()
        .map(|s| PriceSheetInfo {
            name: s.name.clone(),
            title: s.title.clone(),
            source: s.source.clone(),
            as_of: s.as_of.clone(),
            origin: s.origin.clone(),
            models: s.models(),
        })
        .collect();
    Ok(Json(PriceSheetList { items }))
}

/// What a traffic shape costs a month as a function, with provisioned instances, and as an
/// always-on service; the break-even rate and the cheapest model.
#[utoipa::path(post, path = "/v1/cost/calc", request_body = CalcRequest, tag = "cost",
    responses((status = 200, body = CalcAnswer), (status = 400, body = hangar_api::ErrorBody)))]
pub async fn calc(State(state): State<AppState>, _p: Principal, ApiJson(req): ApiJson<CalcRequest>) -> Result<Json<CalcAnswer>, ApiError> {
    Ok(Json(hangar_cost::calc(&req, &sheets(&state)?)?))
}
