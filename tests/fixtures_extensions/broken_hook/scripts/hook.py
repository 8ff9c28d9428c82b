from modules.scripts.base import AlwaysVisible, Script


class BrokenHook(Script):
    def title(self):
        return "Broken hook"

    def show(self, is_img2img):
        return AlwaysVisible

    def process(self, plan, args):
        raise ValueError("broken_hook fails in process on purpose")


def setup(ctx):
    def bad_cfg(params):
        raise ZeroDivisionError("broken_hook cfg callback fails on purpose")
    ctx.on("cfg_denoiser", bad_cfg)
