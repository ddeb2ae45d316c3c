"""HTTP routes the app adds to the MONAI Label 0.8.5 server (installed by ``main.py`` in server mode).

* ``PUT /datastore/image`` and ``PUT /datastore/label`` replace MONAI Label's own (same functions, in a worker
  thread: the app's datastore reads the whole upload to check it).
* ``POST /infer/{model}`` replaces MONAI Label's own route, whose ``async`` handler runs the whole inference on
  the event loop: while one registration runs (40-70 s on 2 cores) the server answers nothing, not even
  ``/info/``. This one checks an uploaded file first (400 naming the file) and runs MONAI Label's
  ``run_inference`` in a worker thread.
* ``GET /registration/outputs/{model}/{folder}/{name}``: a result's files (labels, warped image, ITK
  displacement field, affine ``.tfm``, record), so a client on another machine gets the transform.
* ``GET /registration/atlas/{t1|labels|labels_freesurfer}``: the atlas the segmentation models register.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from monailabel.config import settings
from monailabel.endpoints.datastore import add_image, save_label
from monailabel.endpoints.infer import ResultType, run_inference
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.utils.app import app_instance

from common.engines.label_app import check_image_upload
from common.io.nifti import ImageReadError

from .infer import DOWNLOADABLE, PENDING

logger = logging.getLogger(__name__)

ATLAS_FILES = ("t1", "labels", "labels_freesurfer")
# the request parts of MONAI Label's own /infer route (FastAPI markers, shared by every call)
_PARAMS = Form("{}")
_NO_FILE = File(None)
_NO_LABEL = File(None)
_USER = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))
_ANNOTATOR = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))
_UPLOAD = File(...)
_LABEL_UPLOAD = File(...)


def _checked_upload(upload: UploadFile) -> None:
    """Refuse an uploaded image that is not a usable 3D NIfTI (400 naming the client's file)."""
    name = upload.filename or "upload"
    suffix = "".join(Path(name).suffixes) or ".nii.gz"
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(upload.file, f)
        check_image_upload(tmp, name=name)
    except ImageReadError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    finally:
        os.unlink(tmp)
        upload.file.seek(0)


def build_router() -> APIRouter:
    router = APIRouter()

    @router.post("/infer/{model}", summary="Run inference (in a worker thread; the server keeps answering)")
    async def infer(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = _PARAMS,
        file: UploadFile = _NO_FILE,
        label: UploadFile = _NO_LABEL,
        output: ResultType | None = None,
        user: User = _USER,
    ) -> Any:
        if not file and not image and not session_id:
            raise HTTPException(status_code=400, detail="give an image id (?image=...), a file, or a session id.")
        if file:
            await run_in_threadpool(_checked_upload, file)
        return await run_in_threadpool(run_inference, background_tasks, model, image, session_id, params, file,
                                       label, output)  # fmt: skip

    # MONAI Label's upload routes are async too and the app's datastore reads the whole volume to check it: in a
    # worker thread, so a large upload does not stall the server either
    @router.put("/datastore/", include_in_schema=False)
    @router.put("/datastore/image", summary="Upload an image (checked first; 400 with the reason)")
    async def upload_image(
        background_tasks: BackgroundTasks,
        image: str | None = None,
        params: str = _PARAMS,
        file: UploadFile = _UPLOAD,
        user: User = _ANNOTATOR,
    ) -> Any:
        return await run_in_threadpool(add_image, background_tasks, image, params, file, user.username)

    @router.put("/datastore/label", summary="Save a label (values 1..32 on the image's grid; 400 with the reason)")
    async def upload_label(
        background_tasks: BackgroundTasks,
        image: str,
        params: str = _PARAMS,
        tag: str = DefaultLabelTag.FINAL.value,
        label: UploadFile = _LABEL_UPLOAD,
        user: User = _ANNOTATOR,
    ) -> Any:
        return await run_in_threadpool(save_label, background_tasks, image, params, tag, label, user.username)

    @router.get("/registration/outputs/{model}/{folder}/{name}", summary="Download a registration result file")
    async def download_output(model: str, folder: str, name: str, user: User = _USER) -> FileResponse:
        root = app_instance().outputs_root
        if name not in DOWNLOADABLE or any(s in (model + folder) for s in ("/", "\\", "..")):
            raise HTTPException(status_code=404, detail=f"{name!r} is not a result file ({', '.join(DOWNLOADABLE)}).")
        path = root / model / folder / name
        pending = PENDING.get(str(path.parent.resolve()))
        if pending is not None:  # the transform of the last click may still be being written
            try:
                await run_in_threadpool(pending.result)
            except Exception as exc:
                detail = f"{model}/{folder}: writing the transform failed: {exc}"
                raise HTTPException(status_code=500, detail=detail) from None
        if not path.is_file():
            raise HTTPException(status_code=404, detail=f"no result {model}/{folder}/{name}: run the model first.")
        return FileResponse(path, filename=f"{folder}_{name}")

    @router.get("/registration/atlas/{which}", summary="Download the atlas T1 or its labels")
    async def download_atlas(which: str, user: User = _USER) -> FileResponse:
        if which not in ATLAS_FILES:
            raise HTTPException(status_code=404, detail=f"{which!r}: choose one of {', '.join(ATLAS_FILES)}.")
        path = await run_in_threadpool(app_instance().atlas_file, which)
        return FileResponse(path, filename=f"atlas_{which}.nii.gz")

    return router


def install(server: FastAPI) -> None:
    """Add the routes in front of MONAI Label's own (Starlette matches routes in order); once per server."""
    if getattr(server.state, "registration_zoo_routes", False):
        return
    server.state.registration_zoo_routes = True
    before = len(server.router.routes)
    server.include_router(build_router(), prefix=settings.MONAI_LABEL_API_STR)
    added = server.router.routes[before:]
    del server.router.routes[before:]
    server.router.routes[0:0] = added
    logger.info(f"registration zoo routes installed: {[getattr(r, 'path', r) for r in added]}")
