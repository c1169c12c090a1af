// slicenet's check of an exported model against OpenVINO 2022.3's own runtime (the last release with
// the NCS2's MYRIAD plugin), built by slicenet.export.ov2022 against libopenvino.so.2232 from the
// openvino==2022.3.2 wheel. That release's wheels exist for CPython 3.7-3.10 only, so the check
// calls its C++ API directly. The wheel ships no headers: the few members used are declared here by
// their 2022.3 signatures (the names are what the linker matches), with the pre-C++11 std::string ABI
// the wheel's libraries were built with (-D_GLIBCXX_USE_CXX11_ABI=0).
//
//   ov2022_reader DEVICE MODEL [MODEL ...]
//
// prints one JSON object per model: {"model": ..., "read": bool, "compiled": bool, "error": ...},
// and exits 0 when every model reads and compiles, 1 when one does not, 2 on bad arguments.
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <string>

namespace ov {
class Model;
// Only an empty map is passed, so any stand-in type of Any serves; its name is what links.
class Any {
    char unused_[40];
};
using AnyMap = std::map<std::string, Any>;

class CompiledModel {  // 2022.3: an implementation pointer and the plugin library that owns it
public:
    ~CompiledModel();

private:
    std::shared_ptr<void> impl_;
    std::shared_ptr<void> library_;
};

class Core {
public:
    explicit Core(const std::string& xml_config_file = {});
    std::shared_ptr<ov::Model> read_model(const std::string& model_path, const std::string& bin_path = {}) const;
    CompiledModel compile_model(const std::shared_ptr<const ov::Model>& model, const std::string& device_name,
                                const AnyMap& config);

private:
    class Impl;
    std::shared_ptr<Impl> impl_;
};
}  // namespace ov

namespace {
std::string json_string(const std::string& text) {
    std::string out = "\"";
    for (char c : text) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else if (static_cast<unsigned char>(c) < 0x20) {
            out += ' ';
        } else {
            out += c;
        }
    }
    return out + "\"";
}

void report(const std::string& model, bool read, bool compiled, const std::string& error) {
    std::printf("{\"model\": %s, \"read\": %s, \"compiled\": %s, \"error\": %s}\n", json_string(model).c_str(),
                read ? "true" : "false", compiled ? "true" : "false", json_string(error).c_str());
}
}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s DEVICE MODEL [MODEL ...]\n", argv[0]);
        return 2;
    }
    const std::string device = argv[1];
    ov::Core core;
    int status = 0;
    for (int i = 2; i < argc; ++i) {
        std::shared_ptr<ov::Model> model;
        try {
            model = core.read_model(argv[i]);
        } catch (const std::exception& e) {
            report(argv[i], false, false, e.what());
            status = 1;
            continue;
        }
        try {
            const ov::AnyMap no_options;
            ov::CompiledModel compiled = core.compile_model(model, device, no_options);
        } catch (const std::exception& e) {
            report(argv[i], true, false, e.what());
            status = 1;
            continue;
        }
        report(argv[i], true, true, "");
    }
    return status;
}
