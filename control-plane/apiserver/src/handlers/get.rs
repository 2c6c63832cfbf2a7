//! `GET` of one object, its status, or its `Scale`.

use axum::http::StatusCode;
use axum::response::Response;

use super::{Ctx, scale_of};
use crate::codec::json_response;
use crate::registry::Subresource;
use crate::status::Result;
use crate::table::{self, IncludeObject};

/// `GET /.../<resource>/<name>[/status|/scale]`.
pub(crate) async fn get(ctx: &Ctx) -> Result<Response> {
    let name = ctx.url_name()?;
    let (obj, _) = ctx.current(name).await?;
    if ctx.subresource == Some(Subresource::Scale) {
        return Ok(json_response(StatusCode::OK, &scale_of(&obj)));
    }
    if ctx.subresource.is_none() && crate::codec::wants_table(&ctx.headers) {
        let include = IncludeObject::parse(ctx.params.include_object.as_deref());
        let meta = serde_json::json!({"resourceVersion": crate::object::meta_str(&obj, "resourceVersion")});
        return Ok(json_response(
            StatusCode::OK,
            &table::table(ctx.rt.table, &[obj], meta, include),
        ));
    }
    Ok(json_response(StatusCode::OK, &obj))
}
