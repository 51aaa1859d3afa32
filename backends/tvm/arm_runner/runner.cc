// cacc_arm_runner: load a TVM Relax VM library (export_library .so), run "main" on .npy inputs,
// write the outputs as .npy files and optionally time repeated runs.
//
// Usage: cacc_arm_runner LIB.so OUT_DIR [--warmup W] [--repeat N] IN0.npy [IN1.npy ...]
//
// Outputs are written as OUT_DIR/out0.npy, out1.npy, ... (tuples are flattened in order).
// With --repeat N > 0 the line "CACC_TIMES_MS t1 t2 ... tN" (milliseconds per run of "main",
// inputs already resident) is printed to stdout. Threads: TVM_NUM_THREADS, as for any TVM program.
// Errors go to stderr with a non-zero exit status.

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using tvm::ffi::Any;
using tvm::ffi::Function;
using tvm::ffi::Module;

// 64-byte aligned host memory for the input tensors (TVM kernels assume aligned data).
struct AlignedCPUAlloc {
  void AllocData(DLTensor* t) {
    size_t n = 1;
    for (int i = 0; i < t->ndim; ++i) n *= static_cast<size_t>(t->shape[i]);
    n *= static_cast<size_t>((t->dtype.bits * t->dtype.lanes + 7) / 8);
    size_t size = ((n + 63) / 64) * 64;
    t->data = std::aligned_alloc(64, size == 0 ? 64 : size);
    if (t->data == nullptr) throw std::runtime_error("out of memory");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

struct Npy {
  DLDataType dtype{};
  std::vector<int64_t> shape;
  std::vector<char> data;
};

DLDataType ParseDescr(const std::string& descr) {
  // e.g. '<f4', '|b1', '<i8'
  if (descr.size() < 3) throw std::runtime_error("bad npy descr '" + descr + "'");
  if (descr[0] == '>') throw std::runtime_error("big-endian npy input '" + descr + "' is not supported");
  char kind = descr[1];
  int bytes = std::atoi(descr.c_str() + 2);
  DLDataType t{};
  t.lanes = 1;
  t.bits = static_cast<uint8_t>(bytes * 8);
  switch (kind) {
    case 'f': t.code = kDLFloat; break;
    case 'i': t.code = kDLInt; break;
    case 'u': t.code = kDLUInt; break;
    case 'b': t.code = kDLBool; break;
    default: throw std::runtime_error("unsupported npy dtype '" + descr + "'");
  }
  return t;
}

std::string Descr(DLDataType t) {
  char kind;
  switch (t.code) {
    case kDLFloat: kind = 'f'; break;
    case kDLInt: kind = 'i'; break;
    case kDLUInt: kind = 'u'; break;
    case kDLBool: kind = 'b'; break;
    default: throw std::runtime_error("unsupported output dtype code " + std::to_string(t.code));
  }
  int bytes = (t.bits + 7) / 8;
  return std::string(bytes == 1 ? "|" : "<") + kind + std::to_string(bytes);
}

std::string Field(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) throw std::runtime_error("npy header lacks '" + key + "'");
  size_t colon = header.find(':', k);
  size_t start = header.find_first_not_of(' ', colon + 1);
  if (header[start] == '\'') {
    size_t end = header.find('\'', start + 1);
    return header.substr(start + 1, end - start - 1);
  }
  if (header[start] == '(') return header.substr(start + 1, header.find(')', start) - start - 1);
  size_t end = header.find_first_of(",}", start);
  return header.substr(start, end - start);
}

Npy ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open input " + path);
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + " is not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint8_t b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (b[1] << 8);
  } else {
    uint8_t b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  Npy npy;
  npy.dtype = ParseDescr(Field(header, "descr"));
  if (Field(header, "fortran_order") != "False") throw std::runtime_error(path + ": fortran order is not supported");
  std::stringstream dims(Field(header, "shape"));
  std::string tok;
  int64_t count = 1;
  while (std::getline(dims, tok, ',')) {
    if (tok.find_first_not_of(' ') == std::string::npos) continue;
    npy.shape.push_back(std::stoll(tok));
    count *= npy.shape.back();
  }
  size_t nbytes = static_cast<size_t>(count) * ((npy.dtype.bits + 7) / 8);
  npy.data.resize(nbytes);
  in.read(npy.data.data(), static_cast<std::streamsize>(nbytes));
  if (static_cast<size_t>(in.gcount()) != nbytes) throw std::runtime_error(path + ": truncated data");
  return npy;
}

void WriteNpy(const std::string& path, const tvm::ffi::Tensor& t) {
  const DLTensor* dl = t.GetDLTensorPtr();
  if (dl->device.device_type != kDLCPU) throw std::runtime_error("output is not on the CPU");
  std::string shape = "(";
  int64_t count = 1;
  for (int i = 0; i < dl->ndim; ++i) {
    shape += std::to_string(dl->shape[i]) + (dl->ndim == 1 ? ",)" : (i + 1 < dl->ndim ? ", " : ")"));
    count *= dl->shape[i];
  }
  if (dl->ndim == 0) shape += ")";
  std::string header = "{'descr': '" + Descr(dl->dtype) + "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write " + path);
  out.write("\x93NUMPY\x01\x00", 8);
  uint16_t len = static_cast<uint16_t>(header.size());
  char lb[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(lb, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  size_t nbytes = static_cast<size_t>(count) * ((dl->dtype.bits + 7) / 8);
  out.write(static_cast<const char*>(dl->data) + dl->byte_offset, static_cast<std::streamsize>(nbytes));
}

void Flatten(const Any& value, std::vector<tvm::ffi::Tensor>* outs) {
  if (auto t = value.as<tvm::ffi::Tensor>()) {
    outs->push_back(*t);
  } else if (auto arr = value.as<tvm::ffi::Array<Any>>()) {
    for (const Any& v : *arr) Flatten(v, outs);
  } else {
    throw std::runtime_error("unsupported output type " + value.GetTypeKey());
  }
}

int Run(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " LIB.so OUT_DIR [--warmup W] [--repeat N] IN.npy...\n";
    return 2;
  }
  std::string lib = argv[1], out_dir = argv[2];
  int warmup = 0, repeat = 0;
  std::vector<std::string> inputs;
  for (int i = 3; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--warmup" && i + 1 < argc) {
      warmup = std::atoi(argv[++i]);
    } else if (a == "--repeat" && i + 1 < argc) {
      repeat = std::atoi(argv[++i]);
    } else {
      inputs.push_back(a);
    }
  }
  Module mod = Module::LoadFromFile(lib);
  Function load = mod->GetFunction("vm_load_executable", true).value();
  Module vm = load().cast<Module>();
  // One CPU device (type 1, id 0) with the pooled allocator (2), as relax.VirtualMachine does.
  vm->GetFunction("vm_initialization", true).value()(static_cast<int>(kDLCPU), 0, 2);
  Function main_fn = vm->GetFunction("main", true).value();

  DLDevice cpu{kDLCPU, 0};
  std::vector<Any> args;
  for (const std::string& path : inputs) {
    Npy npy = ReadNpy(path);
    tvm::ffi::Shape shape(npy.shape.begin(), npy.shape.end());
    tvm::ffi::Tensor t = tvm::ffi::Tensor::FromNDAlloc(AlignedCPUAlloc(), shape, npy.dtype, cpu);
    if (!npy.data.empty()) std::memcpy(t.data_ptr(), npy.data.data(), npy.data.size());
    args.emplace_back(t);
  }
  std::vector<tvm::ffi::AnyView> views(args.begin(), args.end());
  auto call = [&]() {
    Any result;
    main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
    return result;
  };
  Any result = call();
  std::vector<tvm::ffi::Tensor> outs;
  Flatten(result, &outs);
  for (size_t i = 0; i < outs.size(); ++i) WriteNpy(out_dir + "/out" + std::to_string(i) + ".npy", outs[i]);

  if (repeat > 0) {
    for (int i = 0; i < warmup; ++i) call();
    std::cout << "CACC_TIMES_MS";
    for (int i = 0; i < repeat; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      call();
      auto t1 = std::chrono::steady_clock::now();
      std::cout << ' ' << std::chrono::duration<double, std::milli>(t1 - t0).count();
    }
    std::cout << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "cacc_arm_runner: " << e.what() << std::endl;
    return 1;
  }
}
