"""An always-on script with typed args, callbacks, a setting and an API route."""
from dataclasses import dataclass

from modules.scripts.args import arg
from modules.scripts.base import AlwaysVisible, Script
from modules.scripts.options import ExtensionOption


class SampleScript(Script):
    @dataclass
    class Args:
        enabled: bool = arg(False, "Enable")
        strength: float = arg(0.5, "Strength", minimum=0.0, maximum=2.0)
        tag: str = arg("none", "Tag")

    def title(self):
        return "Sample Script"

    def show(self, is_img2img):
        return AlwaysVisible

    def process(self, plan, args):
        if args.enabled:
            plan.extra_params["Sample strength"] = args.strength
            plan.extra_params["Sample tag"] = args.tag

    def postprocess_image(self, plan, args, pp):
        if args.enabled:
            image = pp.image.copy()
            image.putpixel((0, 0), (255, 0, 255))
            pp.image = image


def setup(ctx):
    seen = {"cfg": 0, "after_cfg": 0, "saved": [], "models": 0}
    ctx.add_option(ExtensionOption(key="sample_greeting", default="hello", label="Greeting"))

    def on_cfg(params):
        seen["cfg"] += 1

    def on_after_cfg(params):
        seen["after_cfg"] += 1

    def on_saved(params):
        seen["saved"].append(params.filename)

    def on_model(loaded):
        seen["models"] += 1

    def app_started(app):
        app.add_api_route("/sample-ext/status", lambda: {
            "greeting": ctx.registry.options.get("sample_greeting"), **seen})

    ctx.on("cfg_denoiser", on_cfg)
    ctx.on("cfg_after_cfg", on_after_cfg)
    ctx.on("image_saved", on_saved)
    ctx.on("model_loaded", on_model)
    ctx.on("app_started", app_started)
