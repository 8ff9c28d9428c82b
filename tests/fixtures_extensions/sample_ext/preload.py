def preload(parser):
    parser.add_argument("--sample-flag", default="off", help="added by sample_ext")
