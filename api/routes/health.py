from flask_smorest import Blueprint

from api.schemas import Health

blp = Blueprint("health", __name__, description="Liveness")


@blp.route("/healthz")
@blp.response(200, Health)
@blp.doc(security=[])
def healthz():
    """The process is up (it does not check the database; /readyz will)."""
    return {"status": "ok"}
