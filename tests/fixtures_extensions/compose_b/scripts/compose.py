from modules.scripts.base import AlwaysVisible, Script


class ComposeB(Script):
    def title(self):
        return "Compose b"

    def show(self, is_img2img):
        return AlwaysVisible

    def process(self, plan, args):
        order = plan.extra_params.get("Compose", "")
        plan.extra_params["Compose"] = (order + " b").strip()

    def postprocess_image(self, plan, args, pp):
        image = pp.image.copy()
        image.putpixel((1, 0), (0, 255, 0))
        pp.image = image
