window.sampleExtLoaded = true;
