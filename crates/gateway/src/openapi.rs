//! The OpenAPI document of the v1 API, generated from the handlers and wire types.

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(title = "Hangar API", description = "Functions, services and sandboxes under one API. Authenticate with `Authorization: Bearer <key>`."),
    paths(
        crate::api::create_namespace, crate::api::list_namespaces, crate::api::delete_namespace, crate::api::set_namespace_limits,
        crate::api::create_key, crate::api::list_keys, crate::api::delete_key,
        crate::api::list_functions, crate::api::get_function, crate::api::put_function, crate::api::delete_function,
        crate::invoke::invoke_api,
        crate::api::list_invocations, crate::api::get_invocation,
        crate::events::list, crate::events::get,
        crate::events::put_trigger, crate::events::list_triggers, crate::events::delete_trigger, crate::events::publish,
        crate::images::list_images, crate::images::get_image, crate::images::delete_image,
        crate::images::import_image, crate::images::pull_image,
        crate::services::put_service, crate::services::list_services, crate::services::get_service,
        crate::services::delete_service, crate::services::service_logs,
        crate::sandboxes::create, crate::sandboxes::list, crate::sandboxes::get, crate::sandboxes::remove,
        crate::sandboxes::lifecycle, crate::sandboxes::exec, crate::sandboxes::read, crate::sandboxes::write, crate::sandboxes::tty,
        crate::cost::list, crate::cost::calc, crate::usage::list, crate::usage::advice, crate::adapt::switches, crate::adapt::service_switches,
        crate::nodes::list, crate::nodes::drain,
        crate::traces::list, crate::traces::get, crate::series::series, crate::logs::list,
    ),
    components(schemas(hangar_api::FunctionConfig, hangar_api::RuntimeKind, hangar_api::ErrorBody, hangar_api::ErrorDetail, hangar_api::sandboxes::TtyRequest, hangar_api::sandboxes::TtyControl, hangar_api::sandboxes::ExecFrame)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// The document as JSON text.
pub fn json() -> String {
    ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".into())
}
