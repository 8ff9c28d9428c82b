"""Generation routes: txt2img and img2img through the job queue, extras (upscaling),
PNG info, interrogation (CLIP / DeepBooru captions, `modules/upscaling/interrogate/`), and
creating and training textual-inversion embeddings (as jobs on the queue).

Handlers are plain `def`s: FastAPI runs them in its thread pool, so a handler waiting
for its job never blocks the event loop and `/progress` stays responsive.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request

from modules.api.convert import decode_image, encode_png_base64, input_pixel_limit
from modules.api.errors import ApiError
from modules.api.generation import (
    apply_infotext,
    info_dict,
    info_json,
    to_img2img_params,
    to_params,
)
from modules.api.schemas import (
    CreateEmbeddingRequest,
    ExtrasBatchImagesRequest,
    ExtrasSingleImageRequest,
    GenerationResponse,
    Img2ImgRequest,
    InterrogateRequest,
    PNGInfoRequest,
    PNGInfoResponse,
    TrainEmbeddingRequest,
    TrainResponse,
    Txt2ImgRequest,
)
from modules.api.security import basic_user
from modules.errors import without_paths
from modules.imaging.grid import image_grid
from modules.imaging.save import read_image_info
from modules.infotext import parse_infotext
from modules.pipeline.params import GenerationResult, ParamsError
from modules.pipeline.submit import submit_generation
from modules.training.concept_jobs import (
    CreateEmbeddingParams,
    TrainEmbeddingParams,
    create_embedding_job,
    params_from,
    train_embedding_job,
    validate_embedding_training,
)
from modules.upscaling.extras import ExtrasParams, info_html, run_extras, run_extras_batch
from modules.upscaling.face_registry import face_restorers_of
from modules.upscaling.interrogate.service import (
    InterrogatorMissing,
    UnknownInterrogator,
    interrogate,
    interrogators_of,
    kind_of,
)
from modules.upscaling.registry import upscalers_of

log = logging.getLogger(__name__)

EXTRAS_FIELDS = ("resize_mode", "upscaling_resize", "upscaling_resize_w", "upscaling_resize_h",
                 "upscaling_crop", "upscaler_1", "upscaler_2", "extras_upscaler_2_visibility",
                 "gfpgan_visibility", "codeformer_visibility", "codeformer_weight")


class GenerationRoutes:
    """`/sdapi/v1/txt2img`, `/img2img`, extras, `/png-info`, `/interrogate` and embeddings."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime

    def register(self, router: APIRouter) -> None:
        add = router.add_api_route
        add("/sdapi/v1/txt2img", self.txt2img, methods=["POST"], response_model=GenerationResponse)
        add("/sdapi/v1/img2img", self.img2img, methods=["POST"], response_model=GenerationResponse)
        add("/sdapi/v1/extra-single-image", self.extra_single, methods=["POST"])
        add("/sdapi/v1/extra-batch-images", self.extra_batch, methods=["POST"])
        add("/sdapi/v1/png-info", self.png_info, methods=["POST"], response_model=PNGInfoResponse)
        add("/sdapi/v1/interrogate", self.interrogate, methods=["POST"])
        add("/sdapi/v1/create/embedding", self.create_embedding, methods=["POST"],
            response_model=TrainResponse)
        add("/sdapi/v1/train/embedding", self.train_embedding, methods=["POST"],
            response_model=TrainResponse)

    def txt2img(self, request: Txt2ImgRequest, http: Request) -> dict[str, Any]:
        request = apply_infotext(request, self.runtime.settings.current, self.runtime)
        return self._generate(request, to_params(request, self.runtime), "txt2img", http)

    def _generate(self, request, params, kind: str, http: Request) -> dict[str, Any]:
        """Queue generation `kind`, wait, keep overrides if asked, build the body."""
        runtime = self.runtime
        job = submit_generation(runtime, kind, params, job_id=request.force_task_id,
                                owner=basic_user(http.headers.get("authorization")))
        result: GenerationResult = job.wait()
        if not request.override_settings_restore_afterwards and params.override_settings:
            runtime.settings.update(params.override_settings)
        return self._response(request, params, result, started=job.started)

    def _response(self, request, params, result: GenerationResult, *,
                  started: float | None) -> dict[str, Any]:
        settings = self.runtime.settings.for_request(params.override_settings)
        images, infotexts = list(result.images), list(result.infotexts)
        first = 0
        if result.extra.get("grid_included"):  # a script (X/Y/Z plot, ...) made its own grid
            first = 1
        elif len(images) > 1 and settings.return_grid:
            images.insert(0, image_grid(images, rows=None))
            infotexts.insert(0, infotexts[0])
            first = 1
        info = info_dict(request, params, result, started=started, version=self.runtime.version,
                         index_of_first_image=first, infotexts=infotexts)
        encoded = ([encode_png_base64(image, text) for image, text in zip(images, infotexts)]
                   if request.send_images else [])
        parameters = request.model_dump()
        if isinstance(request, Img2ImgRequest) and not request.include_init_images:
            parameters.update(init_images=None, mask=None)
        return {"images": encoded, "parameters": parameters, "info": info_json(info)}

    def img2img(self, request: Img2ImgRequest, http: Request) -> dict[str, Any]:
        request = apply_infotext(request, self.runtime.settings.current, self.runtime)
        return self._generate(request, to_img2img_params(request, self.runtime), "img2img", http)

    def _extras_params(self, request) -> ExtrasParams:
        return ExtrasParams(**{name: getattr(request, name) for name in EXTRAS_FIELDS})

    def _decode(self, text: str, field: str):
        """A client's picture, refused from its header over `--max-input-image-pixels`."""
        return decode_image(text, self.runtime.settings.current, field=field,
                            max_pixels=input_pixel_limit(self.runtime))

    def extra_single(self, request: ExtrasSingleImageRequest) -> dict[str, Any]:
        settings = self.runtime.settings.current
        if not request.image:
            raise ApiError(404, "Image not found")
        with self.runtime.jobs.side_work:  # a bounded number of these at once
            image = self._decode(request.image, "image")
            result, info = run_extras(upscalers_of(self.runtime), image,
                                      self._extras_params(request), settings,
                                      max_pixels=input_pixel_limit(self.runtime),
                                      faces=face_restorers_of(self.runtime))
            return {"html_info": info_html(info), "image": encode_png_base64(result)}

    def extra_batch(self, request: ExtrasBatchImagesRequest) -> dict[str, Any]:
        settings = self.runtime.settings.current
        with self.runtime.jobs.side_work:
            images = [self._decode(item.data, f"imageList[{index}]")
                      for index, item in enumerate(request.imageList)]
            results, info = run_extras_batch(upscalers_of(self.runtime), images,
                                             self._extras_params(request), settings,
                                             max_pixels=input_pixel_limit(self.runtime),
                                             faces=face_restorers_of(self.runtime))
            return {"html_info": info_html(info),
                    "images": [encode_png_base64(image) for image in results]}

    def interrogate(self, request: InterrogateRequest) -> dict[str, str]:
        """A1111's `{"caption": ...}` by "clip" (BLIP caption + CLIP-ranked terms) or
        "deepdanbooru" (tags); 404 "Model not found" for another name, 404 naming the
        folder and file when the model is not installed, 422 for an unusable file."""
        if not request.image:
            raise ApiError(404, "Image not found")
        try:
            kind_of(request.model)
            with self.runtime.jobs.side_work:  # a bounded number of these at once
                image = self._decode(request.image, "image")
                interrogators_of(self.runtime).check(request.model)
                return {"caption": interrogate(self.runtime, image, request.model)}
        except UnknownInterrogator:
            raise ApiError(404, "Model not found") from None
        except InterrogatorMissing as error:
            raise ApiError(404, str(error), error="ModelNotFound") from None

    def create_embedding(self, request: CreateEmbeddingRequest) -> dict[str, str]:
        """A1111's answer: `{"info": "create embedding filename: <path>"}`."""
        params = CreateEmbeddingParams(name=request.name, init_text=request.init_text,
                                       num_vectors_per_token=request.num_vectors_per_token,
                                       overwrite_old=request.overwrite_old)
        path = self.runtime.jobs.submit(lambda: create_embedding_job(self.runtime, params)).wait()
        return {"info": f"create embedding filename: {path}"}

    def train_embedding(self, request: TrainEmbeddingRequest) -> dict[str, str]:
        """Queued as a job (so `/progress` and `/interrupt` apply); bad fields are a 422
        before queueing. As A1111, a failure during training is reported in `info`."""
        if request.use_weight:
            raise ParamsError("use_weight",
                              "weighting the loss by the images' alpha is not supported")
        params = params_from(TrainEmbeddingParams,
                             {**request.model_dump(),
                              "clip_grad_value": _number(request.clip_grad_value)})
        validate_embedding_training(self.runtime, params)
        job = self.runtime.jobs.submit(lambda: train_embedding_job(self.runtime, params),
                                       job_id=request.id_task)
        try:
            result = job.wait()
        except ParamsError:
            raise
        except Exception as error:  # reported as A1111 does; the server keeps serving
            log.exception("embedding training failed")
            return {"info": "train embedding complete: filename:  error: "
                            + without_paths(str(error))}
        return {"info": f"train embedding complete: filename: {result.paths[0]} error: None"}

    def png_info(self, request: PNGInfoRequest) -> dict[str, Any]:
        if not request.image.strip():
            return {"info": "", "items": {}, "parameters": {}}
        with self.runtime.jobs.side_work:
            image = self._decode(request.image.strip(), "image")
            infotext, items = read_image_info(image)
        items = {key: value for key, value in items.items() if _is_json_scalar(value)}
        parameters = parse_infotext(infotext) if infotext else {}
        return {"info": infotext or "", "items": items, "parameters": parameters}


def _number(value: float | str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ParamsError("clip_grad_value", f"{value!r} is not a number") from None


def _is_json_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, bool)) or (isinstance(value, float) and value == value
                                                   and abs(value) != float("inf"))
